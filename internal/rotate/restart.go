package rotate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/preflight"
	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/verify"
)

// Pace chooses between restarting proxies and waiting for them.
type Pace string

// Paces of a rotation.
const (
	// PaceFast restarts, in each phase, the proxies that lag and cannot
	// catch up by themselves (ztunnel takes new roots and leaves only at
	// restart or its half-life refresh; envoys without live PCDS likewise),
	// and never a proxy that already converged or an envoy with live PCDS.
	PaceFast Pace = "fast"
	// PaceGentle restarts only what correctness requires: ztunnel without
	// CA_CERT_WATCHER (before 1.28.6, 1.29.2, 1.30.0) once after the trust
	// phase, because it keeps istiod's root read at start. Everything else
	// is left to the half-life refresh (SECRET_TTL/2), at the price of
	// time: each restart of ztunnel ends the long-lived connections through
	// its node.
	PaceGentle Pace = "gentle"
)

// ParsePace validates a --pace value.
func ParsePace(s string) (Pace, error) {
	switch Pace(s) {
	case PaceFast, PaceGentle:
		return Pace(s), nil
	}
	return "", fmt.Errorf("--pace %q: use fast or gentle", s)
}

// DefaultCertTTL is istio's default workload certificate lifetime
// (SECRET_TTL), used when the ztunnel DaemonSet does not set it.
const DefaultCertTTL = 24 * time.Hour

// ztunnel is what the restart policy needs to know of a ztunnel DaemonSet.
type ztunnel struct {
	ref rollout.Ref
	// version is the image tag; watches is true when that version re-reads
	// istiod's root file (CA_CERT_WATCHER).
	version string
	watches bool
	// ttl is its SECRET_TTL.
	ttl time.Duration
}

// ztunnels reads the ztunnel DaemonSets, their versions from the image tag
// and their SECRET_TTL.
func (e *Engine) ztunnels(ctx context.Context, st *state) ([]ztunnel, error) {
	dss, err := mesh.FindZtunnels(ctx, st.c.Client)
	if err != nil {
		return nil, err
	}
	out := make([]ztunnel, 0, len(dss))
	for _, d := range dss {
		z := ztunnel{ref: rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: d.Namespace, Name: d.Name}, version: d.Version, ttl: DefaultCertTTL}
		z.watches, _ = preflight.ZtunnelWatchesCACert(d.Version)
		if ds, err := st.c.Client.AppsV1().DaemonSets(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{}); err == nil {
			for _, c := range ds.Spec.Template.Spec.Containers {
				for _, env := range c.Env {
					if v, err := time.ParseDuration(env.Value); env.Name == "SECRET_TTL" && err == nil && v > 0 {
						z.ttl = v
					}
				}
			}
		}
		out = append(out, z)
	}
	return out, nil
}

// certTTL is the longest workload certificate lifetime of the cluster's
// ztunnels (DefaultCertTTL when there is none).
func certTTL(zs []ztunnel) time.Duration {
	ttl := time.Duration(0)
	for _, z := range zs {
		ttl = max(ttl, z.ttl)
	}
	if ttl == 0 {
		return DefaultCertTTL
	}
	return ttl
}

// caChannelRestarts lists the ztunnel DaemonSets that must restart after
// the trust phase whatever the pace: their version keeps istiod's root read
// at start (no CA_CERT_WATCHER) and some pod started before istiod loaded
// the trust bundle. Without the restart their CSRs fail once istiod serves
// under the new root (ztunnel#1679).
func (e *Engine) caChannelRestarts(ctx context.Context, st *state, zs []ztunnel) ([]rollout.Ref, error) {
	reloaded := st.record.reloaded(PhaseTrust)
	in, err := mesh.Discover(ctx, st.c.Client, mesh.Options{Namespace: st.c.Namespace})
	if err != nil {
		return nil, err
	}
	var refs []rollout.Ref
	for _, z := range zs {
		if z.watches {
			continue
		}
		for _, p := range in.Proxies {
			if p.Kind != mesh.KindZtunnel || p.Namespace != z.ref.Namespace || (p.Owner.Name != "" && p.Owner.Name != z.ref.Name) {
				continue
			}
			// Pod times have second granularity: a pod of the same second
			// as the reload may have read the old file.
			if reloaded == nil || !p.Created.After(reloaded.Truncate(time.Second).Add(time.Second)) {
				refs = append(refs, z.ref)
				break
			}
		}
	}
	return refs, nil
}

// converge proves phase p on the fleet: it restarts what the pace requires
// and waits for every proxy to hold the phase.
func (e *Engine) converge(ctx context.Context, st *state, p Phase, rootPEM []byte) (time.Duration, error) {
	exp := expectation(st.record, p, rootPEM)
	zs, err := e.ztunnels(ctx, st)
	if err != nil {
		return 0, err
	}
	var waited time.Duration
	restarted := map[string]bool{}
	if p == PhaseTrust {
		refs, err := e.caChannelRestarts(ctx, st, zs)
		if err != nil {
			return 0, err
		}
		w0 := e.opts.Now()
		if err := e.restart(ctx, st, p, ReasonCAChannel, refs...); err != nil {
			return 0, err
		}
		waited += e.opts.Now().Sub(w0)
		for _, r := range refs {
			restarted[r.String()] = true
		}
	}
	e.emit(Event{Kind: EventVerifying, Cluster: st.c.Name, Phase: p, Detail: fmt.Sprintf("phase %s: verifying the fleet against phase %s", p, p)})
	rep, err := st.c.Verifier.Verify(ctx, exp)
	if err != nil {
		return waited, err
	}
	if rep.OK() {
		return waited, nil
	}
	e.emit(Event{Kind: EventLagging, Cluster: st.c.Name, Phase: p, Converged: rep.Total.Total - rep.Total.Failing(), Total: rep.Total.Total, Kinds: kindCounts(rep),
		Detail: fmt.Sprintf("phase %s: %d of %d proxies lag", p, rep.Total.Failing(), rep.Total.Total)})
	if e.opts.Pace == PaceFast {
		refs, err := e.lagRestarts(ctx, st, rep, zs, restarted)
		if err != nil {
			return waited, err
		}
		w0 := e.opts.Now()
		if err := e.restart(ctx, st, p, ReasonLagging, refs...); err != nil {
			return waited, err
		}
		waited += e.opts.Now().Sub(w0)
	}
	// Without a restart a proxy catches up at its half-life refresh: the
	// last one by the time istiod loaded the bundle plus SECRET_TTL/2.
	var expected time.Time
	if r := st.record.reloaded(p); r != nil {
		expected = r.Add(certTTL(zs) / 2)
	}
	timeout, err := e.verifyTimeout(ctx, st)
	if err != nil {
		return waited, err
	}
	if e.opts.Pace != PaceFast {
		w, _, err := e.waitConverged(ctx, st, p, exp, expected, timeout)
		return waited + w, err
	}
	// PaceFast left the envoys with live PCDS to catch up by themselves;
	// one that has not within PCDSGrace will not before its next rotation
	// (ReasonPCDSLag): restart it too, then wait for the rest of the time.
	grace := min(PCDSGrace, timeout/2)
	w, last, err := e.waitConverged(ctx, st, p, exp, expected, grace)
	waited += w
	if err == nil || last == nil || !errors.Is(err, errNotConverged) {
		return waited, err
	}
	envoys := map[string]bool{}
	for _, r := range last.Failing() {
		if r.Kind != mesh.KindZtunnel {
			envoys[r.Namespace+"/"+r.Name] = true
		}
	}
	refs, err := e.envoyWorkloads(ctx, st, envoys, true)
	if err != nil {
		return waited, err
	}
	if len(refs) > 0 {
		e.emit(Event{Kind: EventNote, Cluster: st.c.Name, Phase: p, Detail: fmt.Sprintf(
			"phase %s: still lagging %s into the phase: %s; an envoy with live PCDS that has not caught up by now keeps what it holds until its next renewal (SECRET_TTL/2): restarting its workload",
			p, grace, lagging(last))})
	}
	w0 := e.opts.Now()
	if err := e.restart(ctx, st, p, ReasonPCDSLag, refs...); err != nil {
		return waited, err
	}
	waited += e.opts.Now().Sub(w0)
	w, _, err = e.waitConverged(ctx, st, p, exp, expected, max(timeout-grace, time.Second))
	return waited + w, err
}

// PCDSGrace is how long PaceFast waits for envoys with live PCDS to hold a
// phase by themselves before it restarts them (ReasonPCDSLag). A healthy
// istio-agent applies a pushed trust bundle and re-signs within a second or
// two; the grace leaves room for a loaded machine.
const PCDSGrace = 30 * time.Second

// lagRestarts lists, for PaceFast, the workloads of the lagging proxies that
// cannot catch up by themselves: the ztunnel DaemonSets with a lagging pod
// (not restarted in this phase already), then the envoy workloads with a
// lagging pod whose PCDS is not live (waypoints, gateways, sidecars).
func (e *Engine) lagRestarts(ctx context.Context, st *state, rep *verify.Report, zs []ztunnel, done map[string]bool) ([]rollout.Ref, error) {
	lagging := map[string]bool{}
	ztunnelLags := false
	for _, r := range rep.Failing() {
		lagging[r.Namespace+"/"+r.Name] = true
		if r.Kind == mesh.KindZtunnel {
			ztunnelLags = true
		}
	}
	var refs []rollout.Ref
	if ztunnelLags {
		for _, z := range zs {
			if !done[z.ref.String()] {
				refs = append(refs, z.ref)
			}
		}
	}
	envoys, err := e.envoyWorkloads(ctx, st, lagging, false)
	if err != nil {
		return nil, err
	}
	return append(refs, envoys...), nil
}

// envoyWorkloads lists the owners of envoy proxies to restart, waypoints
// first, then gateways, then sidecar workloads: those with a pod in
// lagging, and of those only the ones that will not pick new roots up by
// themselves (PCDS not live) unless withLivePCDS; every envoy workload,
// PCDS or not, when lagging is nil (the one-step strategy).
func (e *Engine) envoyWorkloads(ctx context.Context, st *state, lagging map[string]bool, withLivePCDS bool) ([]rollout.Ref, error) {
	in, err := mesh.Discover(ctx, st.c.Client, mesh.Options{Namespace: st.c.Namespace})
	if err != nil {
		return nil, err
	}
	multiRoot := len(in.Istiods) > 0
	for _, d := range in.Istiods {
		multiRoot = multiRoot && d.MultiRoot
	}
	var refs []rollout.Ref
	seen := map[string]bool{}
	for _, kind := range []mesh.Kind{mesh.KindWaypoint, mesh.KindGateway, mesh.KindSidecar} {
		for _, p := range in.Proxies {
			if p.Kind != kind || p.Owner.Name == "" {
				continue
			}
			if lagging != nil && (!lagging[p.Namespace+"/"+p.Name] || (p.XDSAgent && multiRoot && !withLivePCDS)) {
				continue
			}
			ref := rollout.Ref{Kind: p.Owner.Kind, Namespace: p.Namespace, Name: p.Owner.Name}
			if !seen[ref.String()] {
				seen[ref.String()] = true
				refs = append(refs, ref)
			}
		}
	}
	return refs, nil
}

// verifyTimeout is how long a phase may take to converge: VerifyTimeout,
// else the certificate lifetime with PaceGentle and 5 minutes otherwise.
func (e *Engine) verifyTimeout(ctx context.Context, st *state) (time.Duration, error) {
	if e.opts.VerifyTimeout != 0 {
		return e.opts.VerifyTimeout, nil
	}
	if e.opts.Pace != PaceGentle {
		return 5 * time.Minute, nil
	}
	zs, err := e.ztunnels(ctx, st)
	if err != nil {
		return 0, err
	}
	return certTTL(zs), nil
}

// errNotConverged: the fleet did not hold the phase within the timeout.
var errNotConverged = errors.New("the fleet did not converge")

// waitConverged polls the fleet until it holds phase p, reporting progress
// each time the count of converged proxies changes, for at most timeout.
// It returns the last report read.
func (e *Engine) waitConverged(ctx context.Context, st *state, p Phase, exp verify.Expectation, expected time.Time, timeout time.Duration) (time.Duration, *verify.Report, error) {
	interval := time.Second
	if e.opts.Pace == PaceGentle {
		interval = 2 * time.Second
	}
	e.emit(Event{Kind: EventVerifying, Cluster: st.c.Name, Phase: p, Detail: fmt.Sprintf("phase %s: waiting for the fleet to converge on phase %s", p, p)})
	w0 := e.opts.Now()
	var last *verify.Report
	lastConverged := -1
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		rep, err := st.c.Verifier.Verify(ctx, exp)
		if err != nil {
			return false, err
		}
		last = rep
		if n := rep.Total.Total - rep.Total.Failing(); n != lastConverged {
			ev := Event{Kind: EventConverging, Cluster: st.c.Name, Phase: p, Converged: n, Total: rep.Total.Total, Kinds: kindCounts(rep),
				Detail: fmt.Sprintf("phase %s: %d/%d proxies hold the phase", p, n, rep.Total.Total)}
			if why := rep.Total.FailingByStatus(); why != "" {
				// A count that drops between two looks says what changed.
				ev.Detail += " (" + why + ")"
			}
			if n < lastConverged {
				// Proxies that held the phase no longer do: name them, it
				// is never expected.
				ev.Detail += "; lagging now: " + lagging(rep)
			}
			lastConverged = n
			if !expected.IsZero() && !rep.OK() {
				t := expected.UTC()
				ev.Expected = &t
				ev.Detail += fmt.Sprintf("; the last lagging one refreshes by %s at the latest (SECRET_TTL/2 after istiod's reload)", t.Format(time.RFC3339))
			}
			e.emit(ev)
		}
		return rep.OK(), nil
	})
	waited := e.opts.Now().Sub(w0)
	if err != nil {
		if last != nil && ctx.Err() == nil {
			return waited, last, fmt.Errorf("%w within %s: %s (run meshca rotate again to keep waiting; --pace fast restarts the lagging proxies)", errNotConverged, timeout, lagging(last))
		}
		return waited, last, err
	}
	return waited, last, nil
}

// restart restarts refs one after the other, waiting for each rollout.
func (e *Engine) restart(ctx context.Context, st *state, p Phase, reason string, refs ...rollout.Ref) error {
	for _, ref := range refs {
		t0 := e.opts.Now()
		e.emit(Event{Kind: EventRestartStarted, Cluster: st.c.Name, Phase: p, Workload: ref.String(), Reason: reason,
			Detail: fmt.Sprintf("phase %s: restarting %s (%s)", p, ref, reason)})
		if err := rollout.RestartAndWait(ctx, st.c.Client, []rollout.Ref{ref}, rollout.Options{Timeout: e.opts.RolloutTimeout, Now: e.opts.Now}); err != nil {
			return err
		}
		d := e.opts.Now().Sub(t0)
		e.emit(Event{Kind: EventRestartFinished, Cluster: st.c.Name, Phase: p, Workload: ref.String(), Reason: reason, Duration: d.Seconds(),
			Detail: fmt.Sprintf("phase %s: %s rolled out (%s)", p, ref, d.Round(100*time.Millisecond))})
	}
	return nil
}

// restartZtunnels restarts every ztunnel DaemonSet (none in a sidecar-only
// mesh).
func (e *Engine) restartZtunnels(ctx context.Context, st *state, p Phase, reason string) error {
	zs, err := e.ztunnels(ctx, st)
	if err != nil {
		return err
	}
	for _, z := range zs {
		if err := e.restart(ctx, st, p, reason, z.ref); err != nil {
			return err
		}
	}
	return nil
}

// lagging names the proxies that fail a report, with their first problem.
func lagging(rep *verify.Report) string {
	var parts []string
	for _, r := range rep.Failing() {
		s := fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name)
		if len(r.Problems) > 0 {
			s += " (" + r.Problems[0] + ")"
		} else if r.Reason != "" {
			s += " (" + string(r.Status) + ": " + r.Reason + ")"
		}
		parts = append(parts, s)
	}
	if rep.RootConfigMaps != nil {
		for _, cm := range rep.RootConfigMaps.Stale {
			parts = append(parts, "configmap "+cm.Namespace+"/istio-ca-root-cert")
		}
	}
	if len(parts) == 0 {
		return "no proxy named"
	}
	if len(parts) > 10 {
		parts = append(parts[:10], fmt.Sprintf("and %d more", len(parts)-10))
	}
	return strings.Join(parts, ", ")
}
