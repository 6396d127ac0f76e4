package rotate

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// Run rotates every cluster up to opts.Until: each phase completes and is
// proven in EVERY cluster before the next phase starts in ANY (clusters of
// one mesh share the root, so a cluster that issues under the new root
// before every other trusts it would break cross-cluster mTLS).
func (e *Engine) Run(ctx context.Context) error {
	ctx, unlock, err := e.startLocked(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return e.explainAPILoss(ctx, e.run(ctx), "meshca rotate")
}

func (e *Engine) run(ctx context.Context) error {
	// Read every cluster and run the preflight where a rotation would
	// start, before the first write in any cluster.
	for _, c := range e.clusters {
		st, err := e.load(ctx, c, false)
		if err != nil {
			return e.refuse(c.Name, "", err)
		}
		if !st.start {
			continue
		}
		if err := e.startable(ctx, st); err != nil {
			return e.refuse(c.Name, "", err)
		}
		pre, err := e.preflight(ctx, c)
		if err != nil {
			return err
		}
		if err := pre.Err(); err != nil {
			return e.refuse(c.Name, "", fmt.Errorf("cluster %s: not ready for a rotation, nothing was changed (meshca check shows the details): %w", c.Name, err))
		}
		e.emit(Event{Kind: EventPreflight, Cluster: c.Name, Detail: "preflight passed (meshca check)"})
	}
	active := 0
	for _, c := range e.clusters {
		before, err := e.load(ctx, c, false)
		if err != nil {
			return e.refuse(c.Name, "", err)
		}
		st, err := e.load(ctx, c, true)
		if err != nil {
			return e.refuse(c.Name, "", err)
		}
		ev := Event{Kind: EventState, Cluster: c.Name, Phase: st.phase, Detail: "cacerts is in phase " + string(st.phase)}
		if st.record != nil {
			ev.NewRoot, ev.NewSigner = st.record.NewRoot, st.record.NewSigner
		}
		switch {
		case before.start:
			ev.Detail += "; a new rotation starts: " + before.why
		case !inProgress(st.record, st.phase) || st.phase == PhaseRolledBack:
			ev.Detail += "; nothing to do: " + st.why
		}
		e.emit(ev)
		if inProgress(st.record, st.phase) && st.phase != PhaseRolledBack {
			active++
			e.active[c.Name] = true
		}
	}
	if active == 0 {
		return nil
	}
	if e.opts.OneStep {
		for _, c := range e.clusters {
			st, err := e.load(ctx, c, false)
			if err != nil {
				return err
			}
			if err := e.oneStep(ctx, st); err != nil {
				return e.refuse(c.Name, PhaseIssue, err)
			}
		}
		return nil
	}
	for _, phase := range []Phase{PhaseTrust, PhaseIssue, PhaseRetire} {
		for _, c := range e.clusters {
			st, err := e.load(ctx, c, false)
			if err != nil {
				return e.refuse(c.Name, phase, err)
			}
			if err := e.runPhase(ctx, st, phase); err != nil {
				return e.refuse(c.Name, phase, fmt.Errorf("cluster %s, phase %s: %w", c.Name, phase, err))
			}
		}
		if string(phase) == string(e.opts.Until) {
			if phase != PhaseRetire {
				e.emit(Event{Kind: EventStopped, Phase: phase, Detail: fmt.Sprintf("stopping after phase %s as asked (--until %s)", phase, phase)})
			}
			break
		}
	}
	return nil
}

// refuse emits a refusal and returns err.
func (e *Engine) refuse(cluster string, p Phase, err error) error {
	e.emit(Event{Kind: EventRefused, Cluster: cluster, Phase: p, Detail: err.Error()})
	return err
}

// runPhase brings one cluster to phase p and proves it on the fleet. A phase
// already proven is only re-verified; one written but not proven continues
// where it stands.
func (e *Engine) runPhase(ctx context.Context, st *state, p Phase) error {
	name := st.c.Name
	if e.active[name] && st.record != nil && !phaseWork(st.record, p) {
		e.emit(Event{Kind: EventNothingToDo, Cluster: name, Phase: p,
			Detail: fmt.Sprintf("phase %s: nothing to do (the new intermediate chains to the root cacerts already trusts)", p)})
		return nil
	}
	if !inProgress(st.record, st.phase) || st.phase == PhaseRolledBack {
		return nil
	}
	if st.phase.index() > p.index() {
		return nil // this cluster is past p already
	}
	if st.record.proven(p) && st.phase == p {
		e.emit(Event{Kind: EventNote, Cluster: name, Phase: p, Detail: fmt.Sprintf("phase %s already proven", p)})
		return nil
	}
	t0 := e.opts.Now()
	var waited time.Duration
	if p == PhaseRetire && st.phase != PhaseRetire && !e.opts.Force {
		// The guard of Linkerd#4287: no proxy may still hold a certificate
		// that chains to the old root. (Once the retire bundle is written,
		// e.g. by a run that was killed, only its proof remains to do.)
		rep, err := st.c.Verifier.Verify(ctx, expectation(st.record, PhaseIssue, nil))
		if err != nil {
			return err
		}
		if !rep.OK() {
			return fmt.Errorf("refusing to retire the old root: %s still hold certificates from the old CA or lack the new root; wait for them (or restart them) and run again, or pass --force to retire anyway (their mTLS will break)", lagging(rep))
		}
		if err := e.retireGates(ctx, st); err != nil {
			return err
		}
	}
	want, err := e.phaseBundle(st, p)
	if err != nil {
		return err
	}
	if !want.Equal(st.cur) {
		reload, err := bundle.Transition(st.cur, want, true)
		if err != nil {
			return err
		}
		write := st.s.writeCACerts
		if st.selfSigned {
			write = func(ctx context.Context, b *bundle.Bundle, _ string) (string, error) {
				return st.s.createCACerts(ctx, b)
			}
		}
		if st.rv, err = write(ctx, want, st.rv); err != nil {
			return err
		}
		st.selfSigned = false
		st.record.mark(p, false, e.opts.Now())
		if err := st.s.writeRecord(ctx, st.record); err != nil {
			return writtenButUnrecorded(st, p, err)
		}
		e.emit(Event{Kind: EventPhaseWritten, Cluster: name, Phase: p, Object: st.c.Namespace + "/" + CACertsSecret,
			Detail: fmt.Sprintf("phase %s: wrote cacerts (%s)", p, describeWrite(st.cur, want, reload))})
	}
	// istiod takes the bundle: hot reload, seen in the ConfigMaps it
	// rewrites; restart it when it does not.
	w0 := e.opts.Now()
	if st.record.Migration() && p == PhaseTrust {
		if err := e.waitIstiodSwitch(ctx, st, want, p); err != nil {
			return err
		}
	}
	if err := e.waitIstiod(ctx, st, want, p); err != nil {
		return err
	}
	waited += e.opts.Now().Sub(w0)
	// Prove, restarting what cannot pick the change up by itself.
	w, err := e.converge(ctx, st, p, want.RootCert)
	waited += w
	if err != nil {
		return err
	}
	return e.proven(ctx, st, p, t0, waited)
}

// phaseBundle is the cacerts bundle of phase p. An intermediate-only
// rotation switches the signer and toggles root-cert.pem between one copy
// of the root and two: the bytes change within istiod's containment rule, so
// istiod's reload shows in istio-ca-root-cert and PCDS makes envoys re-sign,
// while the set of roots stays the same and never grows over renewals.
func (e *Engine) phaseBundle(st *state, p Phase) (*bundle.Bundle, error) {
	next, err := st.pending()
	if err != nil {
		return nil, err
	}
	if !st.record.IntermediateOnly() || p != PhaseIssue {
		return bundle.Build(bundle.Phase(p), st.cur, next, e.opts.Now())
	}
	out := st.cur.Clone()
	out.CACert, out.CAKey, out.CertChain = bytes.Clone(next.CACert), bytes.Clone(next.CAKey), bytes.Clone(next.CertChain)
	if st.held.Signer != st.record.NewSigner {
		blocks, err := pki.DecodeBlocks(st.cur.Source, st.cur.RootCert)
		if err != nil {
			return nil, err
		}
		switch {
		case len(blocks) > 1:
			out.RootCert = bytes.Clone(st.cur.RootCert[blocks[0].Start:blocks[0].End])
		case len(blocks) == 1:
			out.RootCert = appendBytes(st.cur.RootCert, st.cur.RootCert[blocks[0].Start:blocks[0].End])
		}
	}
	out.Source = "phase issue bundle"
	if err := bundle.Validate(out, e.opts.Now()); err != nil {
		return nil, fmt.Errorf("phase issue: the resulting bundle would be rejected by istiod: %w", err)
	}
	if _, err := bundle.Transition(st.cur, out, true); err != nil {
		return nil, fmt.Errorf("phase issue: %w", err)
	}
	return out, nil
}

// proven records that phase p is proven on the fleet.
func (e *Engine) proven(ctx context.Context, st *state, p Phase, t0 time.Time, waited time.Duration) error {
	st.record.mark(p, true, e.opts.Now())
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	if p == PhaseIssue || p == PhaseRetire {
		// cacerts signs with the new intermediate now: Secret NextSecret
		// would only be a second copy of its key.
		if err := e.forgetNext(ctx, st); err != nil {
			return err
		}
	}
	d := e.opts.Now().Sub(t0)
	e.emit(Event{Kind: EventPhaseProven, Cluster: st.c.Name, Phase: p, Duration: d.Seconds(), Waiting: waited.Seconds(),
		Detail: fmt.Sprintf("phase %s: ✓ proven on the whole fleet (%s)", p, d.Round(100*time.Millisecond))})
	return nil
}

// oneStep is the field note's procedure: the new signer and the old root
// appended in one write, then istiod, ztunnel and every envoy restarted. It
// leaves a window in which peers that lack the new root reject the new
// certificates.
func (e *Engine) oneStep(ctx context.Context, st *state) error {
	t0 := e.opts.Now()
	name := st.c.Name
	if st.phase != PhaseNone && (st.phase != PhaseTrust || !st.record.IntermediateOnly()) {
		return fmt.Errorf("cluster %s is in phase %s of a phased rotation: the one-step strategy applies only to a fresh rotation", name, st.phase)
	}
	next, err := st.pending()
	if err != nil {
		return err
	}
	want := next.Clone()
	want.RootCert = appendBytes(next.RootCert, st.cur.RootCert)
	want.Source = "one-step bundle"
	if err := bundle.Validate(want, e.opts.Now()); err != nil {
		return err
	}
	if st.rv, err = st.s.writeCACerts(ctx, want, st.rv); err != nil {
		return err
	}
	st.record.mark(PhaseIssue, false, e.opts.Now())
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return writtenButUnrecorded(st, PhaseIssue, err)
	}
	e.emit(Event{Kind: EventPhaseWritten, Cluster: name, Phase: PhaseIssue, Object: st.c.Namespace + "/" + CACertsSecret,
		Detail: "one-step: wrote the new signer and the old root appended in one write"})
	if err := e.restartIstiod(ctx, st, PhaseIssue, ReasonOneStep); err != nil {
		return err
	}
	if err := e.waitRootConfigMaps(ctx, st, want.RootCert, e.opts.ReloadTimeout); err != nil {
		return err
	}
	if err := e.restartZtunnels(ctx, st, PhaseIssue, ReasonOneStep); err != nil {
		return err
	}
	envoys, err := e.envoyWorkloads(ctx, st, nil, false)
	if err != nil {
		return err
	}
	if err := e.restart(ctx, st, PhaseIssue, ReasonOneStep, envoys...); err != nil {
		return err
	}
	timeout, err := e.verifyTimeout(ctx, st)
	if err != nil {
		return err
	}
	waited, _, err := e.waitConverged(ctx, st, PhaseIssue, expectation(st.record, PhaseIssue, want.RootCert), time.Time{}, timeout)
	if err != nil {
		return err
	}
	if err := e.proven(ctx, st, PhaseIssue, t0, waited); err != nil {
		return err
	}
	e.emit(Event{Kind: EventNote, Cluster: name, Detail: "one-step rotation done; the old root is still trusted — run meshca rotate again to retire it"})
	return nil
}

// writtenButUnrecorded is the error of a record update that failed right
// after a cacerts write: the user must know that cacerts has changed.
func writtenButUnrecorded(st *state, p Phase, err error) error {
	return fmt.Errorf("secret %s/%s already holds the phase %s bundle (resourceVersion %s), but configmap %s/%s could not record it: %w; run meshca rotate again: it derives the phase from cacerts and continues from there",
		st.c.Namespace, CACertsSecret, p, st.rv, st.c.Namespace, RecordName, err)
}

func appendBytes(a, b []byte) []byte {
	out := bytes.Clone(a)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, b...)
}

// describeWrite says what a cacerts write changes, by fingerprint.
func describeWrite(from, to *bundle.Bundle, reload bundle.Reload) string {
	fp, _ := from.Parse()
	tp, _ := to.Parse()
	var parts []string
	if fp != nil && tp != nil {
		if !fp.Signer.Equal(tp.Signer) {
			parts = append(parts, fmt.Sprintf("signer %.12s → %.12s", pki.Fingerprint(fp.Signer), pki.Fingerprint(tp.Signer)))
		}
		fu, _ := pki.Unique(fp.Roots)
		tu, _ := pki.Unique(tp.Roots)
		for _, r := range tu {
			if !pki.Contains(fu, r) {
				parts = append(parts, fmt.Sprintf("+root %.12s", pki.Fingerprint(r)))
			}
		}
		for _, r := range fu {
			if !pki.Contains(tu, r) {
				parts = append(parts, fmt.Sprintf("-root %.12s", pki.Fingerprint(r)))
			}
		}
		parts = append(parts, fmt.Sprintf("root-cert.pem %d → %d blocks", len(fp.Roots), len(tp.Roots)))
	}
	parts = append(parts, "istiod reload: "+string(reload))
	return strings.Join(parts, ", ")
}
