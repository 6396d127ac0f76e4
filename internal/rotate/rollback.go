package rotate

import (
	"context"
	"fmt"
	"slices"

	"github.com/meshca/meshca/internal/bundle"
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
			return e.explainAPILoss(ctx, fmt.Errorf("cluster %s: %w", c.Name, err), "meshca rollback")
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
	if st.record.Migration() {
		return e.rollbackMigration(ctx, st)
	}
	backup, err := st.s.readBackup(ctx, st.record.BackupSecret)
	if err != nil {
		return err
	}
	if st.record.RolledBack != nil && st.cur.Equal(backup) {
		e.emit(Event{Kind: EventNote, Cluster: c.Name, Detail: fmt.Sprintf("already rolled back: cacerts equals secret %s/%s byte for byte", c.Namespace, st.record.BackupSecret)})
		return e.forgetNext(ctx, st)
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
		if st, err = e.stepBack(ctx, st, backup); err != nil {
			return err
		}
		fallthrough
	case PhaseTrust:
		// Leaves issued by the new intermediate (in the issue phase, or by
		// a rollback interrupted right after its step back) chain only to
		// the new root: the fleet must hold leaves of the old signer before
		// the new root leaves root-cert.pem.
		if _, err := e.converge(ctx, st, PhaseTrust, st.cur.RootCert); err != nil {
			return fmt.Errorf("rollback: proxies still hold certificates from the new intermediate, so the new root cannot be dropped yet: %w", err)
		}
		if err := e.rollbackTo(ctx, st, backup, PhaseNone); err != nil {
			return err
		}
	default:
		if err := e.rollbackTo(ctx, st, backup, PhaseNone); err != nil {
			return err
		}
	}
	// Success is what cacerts holds, read back, not what was meant.
	got, _, err := st.s.readCACerts(ctx)
	if err != nil {
		return err
	}
	if !got.Equal(backup) {
		return fmt.Errorf("rollback did not complete: secret %s/%s is not byte for byte the backup %s (it changed during the rollback?); run meshca status, then meshca rollback again",
			c.Namespace, CACertsSecret, st.record.BackupSecret)
	}
	now := e.opts.Now().UTC()
	st.record.RolledBack = &now
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return fmt.Errorf("cacerts was restored from secret %s/%s, but the record could not say so: %w; run meshca rollback again to record it", c.Namespace, st.record.BackupSecret, err)
	}
	if err := e.forgetNext(ctx, st); err != nil {
		return err
	}
	e.emit(Event{Kind: EventRolledBack, Cluster: c.Name, Object: c.Namespace + "/" + st.record.BackupSecret,
		Detail: fmt.Sprintf("✓ rolled back: cacerts equals secret %s/%s byte for byte", c.Namespace, st.record.BackupSecret)})
	return nil
}

// stepBack returns a cluster in the issue phase to the old signer (of
// old, the backed-up bundle) while both roots stay trusted, and reads the
// state again.
func (e *Engine) stepBack(ctx context.Context, st *state, old *bundle.Bundle) (*state, error) {
	next, err := st.pending()
	if err != nil {
		return nil, err
	}
	back, err := bundle.Build(bundle.PhaseTrust, old, next, e.opts.Now())
	if err != nil {
		return nil, err
	}
	if err := e.rollbackTo(ctx, st, back, PhaseTrust); err != nil {
		return nil, err
	}
	return e.load(ctx, st.c, false)
}

// forgetNext deletes Secret NextSecret once the rotation no longer needs it
// (its issue phase proven, or rolled back), saying so.
func (e *Engine) forgetNext(ctx context.Context, st *state) error {
	deleted, err := st.s.deleteNext(ctx, st.record.NewSigner)
	if err != nil {
		return err
	}
	if deleted {
		e.emit(Event{Kind: EventNote, Cluster: st.c.Name, Object: st.c.Namespace + "/" + NextSecret,
			Detail: fmt.Sprintf("deleted secret %s/%s: the copy of the new intermediate's key is no longer needed", st.c.Namespace, NextSecret)})
	}
	return nil
}

// rollbackTo writes want, waits for istiod (restarting it when the change is
// not hot-reloadable), restarts what must be restarted and proves phase p.
// A write that drops a root is refused while a proxy holds a leaf that
// would chain only to a dropped root.
func (e *Engine) rollbackTo(ctx context.Context, st *state, want *bundle.Bundle, p Phase) error {
	if !want.Equal(st.cur) {
		if err := e.refuseStranding(ctx, st, want); err != nil {
			return err
		}
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

// refuseStranding refuses to write want when it drops a root that some
// proxy's leaf needs: every leaf must come from want's signer (which chains
// to want's roots) before the roots shrink.
func (e *Engine) refuseStranding(ctx context.Context, st *state, want *bundle.Bundle) error {
	cp, err := st.cur.Parse()
	if err != nil {
		return err
	}
	wp, err := want.Parse()
	if err != nil {
		return err
	}
	wantRoots := uniqueFPs(wp.Roots)
	dropped := false
	for _, r := range uniqueFPs(cp.Roots) {
		if !slices.Contains(wantRoots, r) {
			dropped = true
		}
	}
	if !dropped {
		return nil
	}
	slices.Sort(wantRoots)
	rep, err := st.c.Verifier.Verify(ctx, verify.Expectation{Source: "the bundle the rollback would write", Roots: wantRoots, Signer: pki.Fingerprint(wp.Signer), AllowExtraRoots: true})
	if err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("refusing to write the backup to secret %s/%s: it drops the new root, which these proxies still need (their leaves are not from the old signer): %s; nothing was written — wait for them to renew (or restart them) and run meshca rollback again",
			st.c.Namespace, CACertsSecret, lagging(rep))
	}
	return nil
}
