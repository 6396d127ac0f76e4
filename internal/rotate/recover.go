package rotate

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// PhaseRecover names the events of `meshca recover`: not a phase of a
// rotation but the one step that replaces an expired CA.
const PhaseRecover Phase = "recover"

// ReasonRecover is why recover restarts istiod, every ztunnel and every envoy so
// that each holds a certificate from the new CA at once.
const ReasonRecover = "recover"

// RecoverOptions tunes Recover.
type RecoverOptions struct {
	// Within treats a root or intermediate that expires within this long as
	// expired already.
	Within time.Duration
	// Force recovers a mesh whose CA is not expiring (the phased rotation is
	// the zero-downtime tool for that).
	Force bool
}

// Recovery is what Recover did in one cluster, with the times it measured
// from its start.
type Recovery struct {
	Cluster string `json:"cluster"`
	// Expired lists each certificate of cacerts that had expired or was
	// within RecoverOptions.Within of it, one sentence each.
	Expired []string `json:"expired"`
	// BackupSecret holds the replaced cacerts, byte for byte.
	BackupSecret string `json:"backupSecret"`
	// NewRoot and NewSigner are the fingerprints of the CA written.
	NewRoot   string `json:"newRoot"`
	NewSigner string `json:"newSigner"`
	// Written, IstiodServing and Proven are the seconds from the start of
	// the recovery to the cacerts write, to istiod serving from the new CA,
	// and to every proxy holding a certificate from it and trusting only the
	// new root (traffic between two proxies is restored once both hold it).
	Written       float64 `json:"writtenSeconds"`
	IstiodServing float64 `json:"istiodServingSeconds"`
	Proven        float64 `json:"provenSeconds"`
}

// expiring lists the certificates of b that expire by deadline.
func expiring(b *bundle.Bundle, deadline time.Time) ([]string, time.Time, error) {
	p, err := b.Parse()
	if err != nil {
		return nil, time.Time{}, err
	}
	var out []string
	var first time.Time
	seen := map[string]bool{}
	check := func(role string, c *x509.Certificate) {
		fp := pki.Fingerprint(c)
		if seen[fp] {
			return
		}
		seen[fp] = true
		if first.IsZero() || c.NotAfter.Before(first) {
			first = c.NotAfter
		}
		if !c.NotAfter.After(deadline) {
			out = append(out, fmt.Sprintf("%s %.12s (%s) expires %s", role, fp, c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	check("intermediate", p.Signer)
	for _, c := range p.Chain {
		if !c.Equal(p.Signer) && !pki.IsSelfSigned(c) {
			check("intermediate", c)
		}
	}
	for _, c := range p.Roots {
		check("root", c)
	}
	sort.Strings(out)
	return out, first, nil
}

// Recover replaces an expired (or expiring) CA in the fewest steps that
// restore traffic, in every cluster: back up cacerts, ONE write of the new
// bundle (root-cert.pem = the new root only: nothing issued under the
// expired CA can be trusted any more), restart istiod (a root change is
// not hot-reloaded), then every ztunnel and every envoy workload, in that
// order, and prove the fleet. Nothing it reads from the cluster needs to be
// valid: expired certificates are parsed, never verified. It refuses a
// healthy CA unless ro.Force.
func (e *Engine) Recover(ctx context.Context, ro RecoverOptions) ([]Recovery, error) {
	ctx, unlock, err := e.startLocked(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	type job struct {
		st      *state
		expired []string
		next    *bundle.Bundle
	}
	var jobs []job
	// Read and check every cluster before the first write in any.
	for _, c := range e.clusters {
		st := &state{c: c, s: store{client: c.Client, namespace: c.Namespace}}
		if st.cur, st.rv, err = st.s.readCACerts(ctx); err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, fmt.Errorf("cluster %s: %w", c.Name, err))
		}
		now := e.opts.Now()
		if st.record, err = st.s.readRecord(ctx); err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, err)
		}
		if resumable(st) {
			e.emit(Event{Kind: EventNote, Cluster: c.Name, Phase: PhaseRecover,
				Detail: fmt.Sprintf("a recovery to intermediate %.12s was interrupted after its write: continuing with the restarts", st.record.NewSigner)})
			jobs = append(jobs, job{st: st, next: st.cur})
			continue
		}
		expired, first, err := expiring(st.cur, now.Add(ro.Within))
		if err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, fmt.Errorf("cluster %s: secret %s/%s cannot be read: %w", c.Name, c.Namespace, CACertsSecret, err))
		}
		if len(expired) == 0 && !ro.Force {
			return nil, e.refuse(c.Name, PhaseRecover, fmt.Errorf("cluster %s: refusing to recover a healthy CA: nothing in secret %s/%s expires within %s (the first certificate expires %s). meshca recover restarts every proxy and breaks traffic until they hold the new CA; meshca rotate --root DIR replaces a valid CA with zero downtime. Nothing was changed; pass --force to recover anyway",
				c.Name, c.Namespace, CACertsSecret, ro.Within, first.UTC().Format(time.RFC3339)))
		}
		if st.target, st.wanted, err = e.targetOf(c); err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, err)
		}
		next, _, err := e.nextBundle(ctx, st, true)
		if err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, err)
		}
		if err := bundle.ValidateNew(next, now); err != nil {
			return nil, e.refuse(c.Name, PhaseRecover, fmt.Errorf("cluster %s: the new CA bundle is not valid, nothing was changed: %w", c.Name, err))
		}
		if left, _, _ := expiring(next, now.Add(ro.Within)); len(left) > 0 {
			return nil, e.refuse(c.Name, PhaseRecover, fmt.Errorf("cluster %s: the new CA expires within %s too (%s): nothing was changed; give a CA that outlives it", c.Name, ro.Within, strings.Join(left, "; ")))
		}
		for _, x := range expired {
			e.emit(Event{Kind: EventNote, Cluster: c.Name, Phase: PhaseRecover, Detail: "expired or expiring: " + x})
		}
		jobs = append(jobs, job{st: st, expired: expired, next: next})
	}
	var out []Recovery
	for _, j := range jobs {
		r, err := e.recover(ctx, j.st, j.next)
		if err != nil {
			return out, e.refuse(j.st.c.Name, PhaseRecover, fmt.Errorf("cluster %s: %w", j.st.c.Name, err))
		}
		r.Expired = j.expired
		out = append(out, *r)
	}
	return out, nil
}

// recover is Recover in one cluster.
func (e *Engine) recover(ctx context.Context, st *state, next *bundle.Bundle) (*Recovery, error) {
	t0 := e.opts.Now()
	since := func() float64 { return e.opts.Now().Sub(t0).Seconds() }
	name := st.c.Name
	np, err := next.Parse()
	if err != nil {
		return nil, err
	}
	root, err := bundle.SignerRoot(next, t0)
	if err != nil {
		return nil, fmt.Errorf("the new CA: %w", err)
	}
	r := &Recovery{Cluster: name, NewRoot: pki.Fingerprint(root), NewSigner: pki.Fingerprint(np.Signer)}
	if resumable(st) {
		r.BackupSecret = st.record.BackupSecret
	} else {
		// Backup, the new bundle and the record before the one write of
		// cacerts: a run killed at any point is re-run (see resumable).
		var id string
		if r.BackupSecret, id, err = st.s.backup(ctx, st.cur, st.record, t0); err != nil {
			return nil, err
		}
		e.emit(Event{Kind: EventBackup, Cluster: name, Phase: PhaseRecover, Object: st.c.Namespace + "/" + r.BackupSecret,
			Detail: fmt.Sprintf("backed up the expired cacerts to secret %s/%s (verified byte for byte)", st.c.Namespace, r.BackupSecret)})
		_, nextRV, err := st.s.readNext(ctx)
		if err != nil {
			return nil, err
		}
		if err := st.s.writeNext(ctx, next, nextRV); err != nil {
			return nil, err
		}
		if err := e.recordRecovery(ctx, st, r, id, t0); err != nil {
			return nil, err
		}
		if st.rv, err = st.s.writeCACerts(ctx, next, st.rv); err != nil {
			return nil, err
		}
		r.Written = since()
		e.emit(Event{Kind: EventPhaseWritten, Cluster: name, Phase: PhaseRecover, Object: st.c.Namespace + "/" + CACertsSecret, NewRoot: r.NewRoot, NewSigner: r.NewSigner,
			Detail: fmt.Sprintf("recover: wrote cacerts (%s) in one write", describeWrite(st.cur, next, "istiod restart"))})
	}
	if err := e.restartIstiod(ctx, st, PhaseRecover, ReasonRecover); err != nil {
		return nil, err
	}
	if err := e.waitRootConfigMaps(ctx, st, next.RootCert, e.opts.ReloadTimeout); err != nil {
		return nil, err
	}
	if err := e.waitReplicas(ctx, st, np.Signer, e.opts.ReloadTimeout); err != nil {
		return nil, err
	}
	r.IstiodServing = since()
	e.emit(Event{Kind: EventIstiodReloaded, Cluster: name, Phase: PhaseRecover, Duration: r.IstiodServing,
		Detail: fmt.Sprintf("recover: istiod serves from the new CA (%.1fs after start)", r.IstiodServing)})
	if err := e.restartZtunnels(ctx, st, PhaseRecover, ReasonRecover); err != nil {
		return nil, err
	}
	envoys, err := e.envoyWorkloads(ctx, st, nil, false)
	if err != nil {
		return nil, err
	}
	if err := e.restart(ctx, st, PhaseRecover, ReasonRecover, envoys...); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(next.RootCert)
	exp := verify.Expectation{Source: "recovered CA", Roots: []string{r.NewRoot}, Signer: r.NewSigner, RootCertSHA256: hex.EncodeToString(sum[:])}
	timeout, err := e.verifyTimeout(ctx, st)
	if err != nil {
		return nil, err
	}
	if _, _, err := e.waitConverged(ctx, st, PhaseRecover, exp, time.Time{}, timeout); err != nil {
		return nil, err
	}
	r.Proven = since()
	st.record.mark(PhaseRetire, true, e.opts.Now())
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return nil, err
	}
	if err := e.forgetNext(ctx, st); err != nil {
		return nil, err
	}
	e.emit(Event{Kind: EventPhaseProven, Cluster: name, Phase: PhaseRecover, Duration: r.Proven,
		Detail: fmt.Sprintf("recover: ✓ every proxy holds a certificate from the new CA and trusts only the new root (%.1fs after start)", r.Proven)})
	return r, nil
}

// resumable reports whether st is a recovery interrupted after its write:
// the record of an unproven recovery whose signer cacerts holds.
func resumable(st *state) bool {
	if st.record == nil || st.record.Strategy != strategyRecover || st.record.proven(PhaseRetire) {
		return false
	}
	p, err := st.cur.Parse()
	return err == nil && pki.Fingerprint(p.Signer) == st.record.NewSigner
}

// strategyRecover is Record.Strategy of a recovery.
const strategyRecover = "recover"

// recordRecovery records the recovery as a rotation to the new CA whose
// retire phase is written (proven once the fleet is), so that status shows
// it, an interrupted run is resumed, and a later `meshca rotate` starts
// afresh from it (a rotation record left in progress by the expired CA is
// replaced).
func (e *Engine) recordRecovery(ctx context.Context, st *state, r *Recovery, id string, t0 time.Time) error {
	prev := st.record
	old, err := st.cur.Parse()
	if err != nil {
		return err
	}
	rec := &Record{ID: id, Strategy: strategyRecover, OldRoots: uniqueFPs(old.Roots), OldSigner: pki.Fingerprint(old.Signer),
		NewRoot: r.NewRoot, NewSigner: r.NewSigner, BackupSecret: r.BackupSecret, Started: t0.UTC()}
	if prev != nil {
		rec.resourceVersion = prev.resourceVersion
	}
	rec.mark(PhaseRetire, false, e.opts.Now())
	if err := st.s.writeRecord(ctx, rec); err != nil {
		return err
	}
	st.record = rec
	return nil
}
