package rotate

import (
	"context"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// ClusterPlan is what a run would do in one cluster, from where it stands
// now.
type ClusterPlan struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	// Phase is where cacerts stands now.
	Phase Phase `json:"phase"`
	// Start is set when the run would start a new rotation; Why says how
	// cacerts differs from the CA asked for (or why nothing is to do).
	Start bool   `json:"start"`
	Why   string `json:"why,omitempty"`
	// NewRoot and NewSigner are the fingerprints the run rotates to; the
	// signer is the intermediate the run will write.
	NewRoot   string `json:"newRoot,omitempty"`
	NewSigner string `json:"newSigner,omitempty"`
	// Intermediate says where the new intermediate comes from.
	Intermediate string `json:"intermediate,omitempty"`
	// IntermediateOnly: the root stays; only the issue phase runs.
	IntermediateOnly bool `json:"intermediateOnly,omitempty"`
	// Migration: the old CA is istiod's self-signed CA (istio-ca-secret);
	// the trust phase creates cacerts and restarts istiod once.
	Migration bool `json:"migration,omitempty"`
	// Blockers would make the run refuse (preflight errors, a rotation to
	// another CA in progress); Warnings would not.
	Blockers []string `json:"blockers,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// Steps are what the run would do, in order, one sentence each.
	Steps []PlanStep `json:"steps"`
}

// PlanStep is one step of a plan.
type PlanStep struct {
	// Phase is empty for the steps before the first phase.
	Phase Phase  `json:"phase,omitempty"`
	Text  string `json:"text"`
	// Restarts is how many rollout restarts the step may do (an upper
	// bound with PaceFast, exact with PaceGentle).
	Restarts int `json:"restarts,omitempty"`
}

// Plan says, without changing anything in any cluster, what a Run would do
// from where each cluster stands now: whether a rotation starts and why,
// what would block it (the preflight runs in every state), each cacerts
// write, and the restarts of the chosen pace. With Root and RootDir, the new
// intermediate of each cluster is issued once and kept in RootDir/<cluster>/
// so that the run writes exactly the intermediate the plan shows.
func (e *Engine) Plan(ctx context.Context) ([]ClusterPlan, error) {
	e.started = e.opts.Now()
	var out []ClusterPlan
	for _, c := range e.clusters {
		cp, err := e.planCluster(ctx, c)
		if err != nil {
			return nil, err
		}
		out = append(out, *cp)
	}
	return out, nil
}

// Blocked reports whether any plan has a blocker.
func Blocked(plans []ClusterPlan) bool {
	for _, p := range plans {
		if len(p.Blockers) > 0 {
			return true
		}
	}
	return false
}

func (e *Engine) planCluster(ctx context.Context, c *Cluster) (*ClusterPlan, error) {
	cp := &ClusterPlan{Cluster: c.Name, Namespace: c.Namespace}
	pre, err := e.preflight(ctx, c)
	if err != nil {
		return nil, err
	}
	for _, chk := range pre.Warnings() {
		cp.Warnings = append(cp.Warnings, "preflight: "+chk.String())
	}
	st, err := e.load(ctx, c, false)
	// The run refuses to start a rotation on a mesh that fails the
	// preflight; a rotation in progress continues (its preflight passed).
	for _, chk := range pre.Errors() {
		if err != nil || st.start {
			cp.Blockers = append(cp.Blockers, "preflight: "+chk.String())
		} else {
			cp.Warnings = append(cp.Warnings, "preflight (a run starting a new rotation would refuse): "+chk.String())
		}
	}
	if err == nil && st.start {
		err = e.startable(ctx, st)
	}
	if err != nil {
		cp.Blockers = append(cp.Blockers, err.Error())
		return cp, nil
	}
	cp.Phase = st.phase
	migration := st.selfSigned || st.record.Migration()
	cp.Migration = migration
	step := func(p Phase, restarts int, format string, args ...any) {
		cp.Steps = append(cp.Steps, PlanStep{Phase: p, Text: fmt.Sprintf(format, args...), Restarts: restarts})
	}
	rec, next := st.record, st.next
	switch {
	case st.start:
		cp.Start, cp.Why = true, "a new rotation starts: "+st.why
		if migration {
			cp.Why = "a migration from istiod's self-signed CA (secret " + c.Namespace + "/" + mesh.SelfSignedSecret + ", no cacerts) to a plug-in CA starts: " + st.why
			step("", 0, "copy secret %s/%s to a backup Secret and verify it byte for byte (istio-ca-secret itself is never written)", c.Namespace, mesh.SelfSignedSecret)
		} else {
			step("", 0, "copy secret %s/%s to a backup Secret and verify it byte for byte", c.Namespace, CACertsSecret)
		}
		var from string
		if next, from, err = e.nextBundle(ctx, st, true); err != nil {
			cp.Blockers = append(cp.Blockers, err.Error())
			return cp, nil
		}
		cp.Intermediate = from
		if rec, err = e.planRecord(st, next); err != nil {
			return nil, err
		}
		step("", 0, "keep the new CA bundle (%s) in secret %s/%s and record the rotation in configmap %s/%s", from, c.Namespace, NextSecret, c.Namespace, RecordName)
	case inProgress(st.record, st.phase) && st.phase != PhaseRolledBack:
		cp.Why = fmt.Sprintf("a rotation is in progress in phase %s (backup %s); the run continues it", st.phase, st.record.BackupSecret)
		cp.Intermediate = fmt.Sprintf("the intermediate pending in secret %s/%s", c.Namespace, NextSecret)
	default:
		cp.Why = "nothing to do: " + st.why
		return cp, nil
	}
	cp.NewRoot, cp.NewSigner, cp.IntermediateOnly = rec.NewRoot, rec.NewSigner, rec.IntermediateOnly()
	if e.opts.OneStep {
		step(PhaseIssue, 0, "one-step: write the new signer with root-cert.pem = new root + old root, restart istiod, ztunnel and every envoy workload (expect failed handshakes)")
		return cp, nil
	}
	zs, err := e.ztunnels(ctx, st)
	if err != nil {
		return nil, err
	}
	envoys, pcds, err := e.envoyCounts(ctx, st)
	if err != nil {
		return nil, err
	}
	cur, held, phase := st.cur, st.held, st.phase
	for _, p := range []Phase{PhaseTrust, PhaseIssue, PhaseRetire} {
		if !phaseWork(rec, p) {
			step(p, 0, "nothing to do: the new intermediate chains to the root cacerts already trusts")
		} else if phase.index() <= p.index() {
			tmp := &state{c: c, cur: cur, next: next, record: rec, held: held}
			want, err := e.phaseBundle(tmp, p)
			if err != nil {
				cp.Blockers = append(cp.Blockers, fmt.Sprintf("phase %s: %v", p, err))
				return cp, nil
			}
			reload, err := bundle.Transition(cur, want, true)
			if err != nil {
				cp.Blockers = append(cp.Blockers, fmt.Sprintf("phase %s: %v", p, err))
				return cp, nil
			}
			switch {
			case want.Equal(cur):
				step(p, 0, "cacerts already holds this phase's bundle")
			case migration && p == PhaseTrust && st.selfSigned:
				step(p, 0, "create cacerts with the self-signed CA still signing and root-cert.pem = the self-signed root's exact bytes + the new root (%s)", describeWrite(cur, want, "istiod restart"))
			default:
				step(p, 0, "write cacerts: %s", describeWrite(cur, want, reload))
			}
			if p == PhaseRetire {
				step(p, 0, "refuse unless no proxy holds a certificate from the old CA and the injection and validation webhooks' caBundle hold the new root")
			}
			if migration && p == PhaseTrust {
				step(p, 1, "restart istiod once: it does not hot-reload the switch from its self-signed CA to cacerts (istio#57853); prove it serves from cacerts (istio-ca-root-cert in every namespace carries both roots)")
			} else {
				step(p, 0, "wait for istiod to hot-reload (istio-ca-root-cert in every namespace); restart istiod if it does not within %s", e.opts.ReloadTimeout)
			}
			e.planRestarts(cp, p, zs, envoys, pcds)
			cur = want
			if held, err = e.holdingOf(cur); err != nil {
				return nil, err
			}
		}
		if string(p) == string(e.opts.Until) {
			break
		}
	}
	return cp, nil
}

// planRecord is the record a new rotation from st to next would write.
func (e *Engine) planRecord(st *state, next *bundle.Bundle) (*Record, error) {
	np, err := next.Parse()
	if err != nil {
		return nil, err
	}
	root, err := bundle.SignerRoot(next, e.opts.Now())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", st.c.Name, err)
	}
	return &Record{OldRoots: st.held.Roots, OldSigner: st.held.Signer, NewRoot: pki.Fingerprint(root), NewSigner: pki.Fingerprint(np.Signer)}, nil
}

// envoyCounts counts the envoy proxies, and those whose PCDS is live.
func (e *Engine) envoyCounts(ctx context.Context, st *state) (envoys, pcds int, err error) {
	in, err := mesh.Discover(ctx, st.c.Client, mesh.Options{Namespace: st.c.Namespace})
	if err != nil {
		return 0, 0, err
	}
	multiRoot := len(in.Istiods) > 0
	for _, d := range in.Istiods {
		multiRoot = multiRoot && d.MultiRoot
	}
	for _, p := range in.Proxies {
		if p.Kind.Envoy() {
			envoys++
			if p.XDSAgent && multiRoot {
				pcds++
			}
		}
	}
	return envoys, pcds, nil
}

// planRestarts adds the restarts of phase p under the engine's pace.
func (e *Engine) planRestarts(cp *ClusterPlan, p Phase, zs []ztunnel, envoys, pcds int) {
	add := func(restarts int, format string, args ...any) {
		cp.Steps = append(cp.Steps, PlanStep{Phase: p, Text: fmt.Sprintf(format, args...), Restarts: restarts})
	}
	caChannel := map[string]bool{}
	for _, z := range zs {
		switch {
		case p == PhaseTrust && !z.watches:
			caChannel[z.ref.String()] = true
			add(1, "restart %s once after istiod loads the bundle (ztunnel %s has no CA_CERT_WATCHER: it keeps istiod's root read at start, and its CSRs would fail once istiod serves under the new root)", z.ref, z.version)
		case p == PhaseTrust:
			add(0, "no CA-channel restart of %s: ztunnel %s re-reads istiod's root (CA_CERT_WATCHER)", z.ref, z.version)
		}
	}
	ttl := certTTL(zs)
	if e.opts.Pace == PaceGentle {
		timeout := e.opts.VerifyTimeout
		if timeout == 0 {
			timeout = ttl
		}
		add(0, "pace gentle: restart nothing else; wait for the half-life refresh of every proxy (SECRET_TTL/2 = %s after istiod's reload; envoys with live PCDS take it at once), for at most %s", (ttl / 2).Round(time.Second), timeout)
		return
	}
	for _, z := range zs {
		if caChannel[z.ref.String()] {
			continue
		}
		add(1, "pace fast: restart %s if any of its pods lags (ztunnel takes new roots and leaves only at restart or at its refresh, SECRET_TTL/2 = %s)", z.ref, (ttl / 2).Round(time.Second))
	}
	if envoys > pcds {
		add(envoys-pcds, "pace fast: restart the workloads of the %d envoy proxies without live PCDS that lag", envoys-pcds)
	}
	if pcds > 0 {
		add(0, "%d envoy proxies with live PCDS take the change at once: never restarted", pcds)
	}
}
