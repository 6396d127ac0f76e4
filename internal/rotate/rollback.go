package rotate

import (
	"context"
	"fmt"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// Rollback returns every cluster to the backup taken before the rotation's
// first write, stepping back through the phases so that no proxy is left
// with a certificate its peers do not trust: from issue, first back to the
// old signer with both roots, then to the backup. From retire (or complete)
// it refuses: every proxy trusts only the new root, and restoring the old
// CA would strand them all.
func (e *Engine) Rollback(ctx context.Context) error {
	ctx, unlock, err := e.startLocked(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	for _, c := range e.clusters {
		if err := e.rollback(ctx, c); err != nil {
			return fmt.Errorf("cluster %s: %w", c.Name, err)
		}
	}
	return nil
}

func (e *Engine) rollback(ctx context.Context, c *Cluster) error {
	st, err := e.load(ctx, c, false)
	if err != nil {
		return err
	}
	if st.record == nil {
		return fmt.Errorf("no rotation recorded (configmap %s/%s): nothing to roll back", c.Namespace, RecordName)
	}
	if st.record.RolledBack != nil && (st.phase == PhaseNone || st.phase == PhaseRolledBack) {
		e.emit(Event{Kind: EventNote, Cluster: c.Name, Detail: "already rolled back to secret " + st.record.BackupSecret})
		return nil
	}
	if st.record.Migration() {
		return e.rollbackMigration(ctx, st)
	}
	backup, err := st.s.readBackup(ctx, st.record.BackupSecret)
	if err != nil {
		return err
	}
	switch st.phase {
	case PhaseRetire, PhaseComplete:
		rep, _ := c.Verifier.Verify(ctx, expectation(st.record, PhaseRetire, nil))
		who := "every proxy"
		if rep != nil {
			who = fmt.Sprintf("%d proxies", rep.Total.Match)
		}
		return fmt.Errorf("refusing to roll back: the old root is retired and %s trust only the new root %.12s; restoring secret %s would make them reject every certificate istiod issues. To return to the old CA, rotate to it: meshca rotate --ca-dir <old bundle> (a new three-phase rotation)",
			who, st.record.NewRoot, st.record.BackupSecret)
	case PhaseIssue:
		// Step back to the old signer while both roots are trusted.
		back, err := bundle.Build(bundle.PhaseTrust, backup, st.next, e.opts.Now())
		if err != nil {
			return err
		}
		if err := e.rollbackTo(ctx, st, back, PhaseTrust); err != nil {
			return err
		}
		if st, err = e.load(ctx, c, false); err != nil {
			return err
		}
		fallthrough
	case PhaseTrust:
		if err := e.rollbackTo(ctx, st, backup, PhaseNone); err != nil {
			return err
		}
	case PhaseNone:
		e.emit(Event{Kind: EventNote, Cluster: c.Name, Detail: "cacerts still holds the original CA"})
	}
	now := e.opts.Now().UTC()
	st.record.RolledBack = &now
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	e.emit(Event{Kind: EventRolledBack, Cluster: c.Name, Object: c.Namespace + "/" + st.record.BackupSecret,
		Detail: fmt.Sprintf("✓ rolled back to secret %s/%s", c.Namespace, st.record.BackupSecret)})
	return nil
}

// rollbackTo writes want, waits for istiod (restarting it when the change is
// not hot-reloadable), restarts what must be restarted and proves phase p.
func (e *Engine) rollbackTo(ctx context.Context, st *state, want *bundle.Bundle, p Phase) error {
	if !want.Equal(st.cur) {
		reload, terr := bundle.Transition(st.cur, want, true)
		var err error
		if st.rv, err = st.s.writeCACerts(ctx, want, st.rv); err != nil {
			return err
		}
		if terr != nil {
			e.emit(Event{Kind: EventPhaseWritten, Cluster: st.c.Name, Phase: p, Object: st.c.Namespace + "/" + CACertsSecret,
				Detail: fmt.Sprintf("rollback to %s: wrote cacerts; istiod cannot hot-reload this change (%v), restarting it", p, terr)})
			if err := e.restartIstiod(ctx, st, p, ReasonIstiodReload); err != nil {
				return err
			}
		} else {
			e.emit(Event{Kind: EventPhaseWritten, Cluster: st.c.Name, Phase: p, Object: st.c.Namespace + "/" + CACertsSecret,
				Detail: fmt.Sprintf("rollback to %s: wrote cacerts (%s)", p, describeWrite(st.cur, want, reload))})
		}
	}
	if err := e.waitIstiod(ctx, st, want, p); err != nil {
		return err
	}
	_, err := e.converge(ctx, st, p, want.RootCert)
	return err
}

// ClusterStatus is where one cluster's rotation stands.
type ClusterStatus struct {
	Context      string   `json:"context"`
	Phase        Phase    `json:"phase"`
	BackupSecret string   `json:"backupSecret,omitempty"`
	OldRoots     []string `json:"oldRoots"`
	NewRoot      string   `json:"newRoot,omitempty"`
	// CA says what istiod signs with now: "plug-in (secret cacerts)" or
	// "self-signed (secret istio-ca-secret)".
	CA string `json:"ca"`
	// Signer is the fingerprint of the certificate cacerts signs with now.
	Signer string `json:"signer"`
	// Roots are the fingerprints in cacerts' root-cert.pem now.
	Roots []string `json:"roots"`
	// Record is the rotation record, when a rotation was started.
	Record *Record `json:"record,omitempty"`
	// Fleet is the verification against what cacerts holds now.
	Fleet *verify.Counts `json:"fleet,omitempty"`
	// FleetByKind breaks Fleet down per kind of proxy.
	FleetByKind []verify.KindSummary `json:"fleetByKind,omitempty"`
	// Next says what `meshca rotate` would do next.
	Next string `json:"next"`
}

// Status reports each cluster's phase, fingerprints and fleet convergence.
func (e *Engine) Status(ctx context.Context) ([]ClusterStatus, error) {
	var out []ClusterStatus
	for _, c := range e.clusters {
		st, err := e.load(ctx, c, false)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		p, err := st.cur.Parse()
		if err != nil {
			return nil, err
		}
		cs := ClusterStatus{Context: c.Name, Phase: PhaseNone, Signer: pki.Fingerprint(p.Signer), Roots: uniqueFPs(p.Roots), Record: st.record}
		cs.OldRoots = cs.Roots
		cs.CA = "plug-in (secret " + CACertsSecret + ")"
		if st.selfSigned {
			cs.CA = "self-signed (secret " + mesh.SelfSignedSecret + ")"
		}
		if st.record != nil {
			cs.Phase, cs.BackupSecret, cs.OldRoots, cs.NewRoot = st.phase, st.record.BackupSecret, st.record.OldRoots, st.record.NewRoot
		}
		// The fleet against what cacerts holds now, as `meshca verify` checks it.
		ca, err := mesh.ReadCA(ctx, c.Client, c.Namespace)
		if err != nil {
			return nil, err
		}
		if rep, err := c.Verifier.Verify(ctx, verify.ExpectationFromCA(ca)); err == nil {
			cs.Fleet = &rep.Total
			cs.FleetByKind = rep.Kinds
		}
		cs.Next = nextAction(cs.Phase, st.record)
		out = append(out, cs)
	}
	return out, nil
}
