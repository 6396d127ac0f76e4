package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// TestRealAgentBacksEnvoyPods: with Agent real, every envoy pod (waypoints,
// gateway) gets its certificate and roots from the real pilot-agent over
// SDS, the pods turn Ready through the agent's own readiness, and the probe
// runs through them without failures.
func TestRealAgentBacksEnvoyPods(t *testing.T) {
	s := startSandbox(t, sandbox.Options{Agent: sandbox.AgentReal, MultiRoot: true, XDSAgent: true, Nodes: 1, Workloads: 2, AppNamespaces: 1})
	ctx := context.Background()
	var envoys int
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		envoys = 0
		st, err := s.Status(ctx)
		if err != nil {
			return false, err
		}
		for _, st := range st.Proxies {
			if st.Kind == "ztunnel" {
				continue
			}
			if !strings.HasPrefix(st.Agent, "pilot-agent") || st.Available != 1 {
				return false, nil
			}
			envoys++
		}
		return envoys >= 2, nil
	})
	if err != nil {
		st, _ := s.Status(ctx)
		t.Fatalf("envoy pods never all held a certificate from a real pilot-agent: %v; %+v", err, st.Proxies)
	}
	// The probe's handshakes to an envoy pod are served by the pod's own
	// envoy stand-in process, which counts them on its inbound listener,
	// and those the pod originates go through its outbound listener.
	// Waypoints accept the probe's connections and originate some; the
	// ingress gateway only originates them.
	served, originated := map[string]uint64{}, map[string]uint64{}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		st, err := s.Status(ctx)
		if err != nil {
			return false, err
		}
		for _, p := range st.Proxies {
			if p.Kind == "ztunnel" {
				continue
			}
			var err error
			if originated[p.Pod], err = stubStat(ctx, p.EnvoyAdmin, "downstream_cx_total", true); err != nil {
				return false, err
			}
			if originated[p.Pod] == 0 {
				return false, nil
			}
			if p.Kind != "waypoint" {
				continue
			}
			if served[p.Pod], err = stubStat(ctx, p.EnvoyAdmin, "ssl.handshake", false); err != nil {
				return false, err
			}
			if served[p.Pod] == 0 {
				return false, nil
			}
		}
		return s.Probe().Handshakes > 0, nil
	})
	if err != nil {
		t.Fatalf("the envoy stand-ins never carried the probe: %v (handshakes served by pod: %v, connections originated: %v)", err, served, originated)
	}
	snap := s.Probe()
	t.Logf("%d envoy pods on the real agent; probe: %d handshakes, %d failed; served by the stand-ins: %v; originated through them: %v", envoys, snap.Handshakes, snap.Failures, served, originated)
	if snap.Failures != 0 {
		t.Errorf("probe through the real agents: %d handshakes, %d failed", snap.Handshakes, snap.Failures)
	}
}

// stubStat reads a listener stat of an envoy stand-in from its admin
// /stats: the one ending in name of its inbound listener (the one with
// ssl stats), or of its outbound listener (the other) when outbound.
func stubStat(ctx context.Context, admin, name string, outbound bool) (uint64, error) {
	if admin == "" {
		return 0, errors.New("no envoy admin address in the sandbox status")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/stats?filter=^listener", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	stats := map[string]string{}
	inbound := ""
	for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			stats[k] = v
			if l, ok := strings.CutSuffix(k, ".ssl.handshake"); ok {
				inbound = l
			}
		}
	}
	for k, v := range stats {
		l, ok := strings.CutSuffix(k, "."+name)
		if ok && (l == inbound) != outbound {
			return strconv.ParseUint(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("envoy admin %s: no %s stat of the %s listener in %q", admin, name, map[bool]string{true: "outbound", false: "inbound"}[outbound], body)
}

// TestRealAgentAppliesPCDSTrustBundle: in the trust phase the real
// pilot-agents put the new root into ROOTCA without a restart, and it can
// only have come over PCDS from istiod: the mounted istio-ca-root-cert file
// is held back (a kubelet delay longer than the test). The agents' own log
// lines for the update are shown.
func TestRealAgentAppliesPCDSTrustBundle(t *testing.T) {
	s := startSandbox(t, sandbox.Options{Agent: sandbox.AgentReal, MultiRoot: true, XDSAgent: true, Nodes: 1, Workloads: 2, AppNamespaces: 1,
		RootCertVolumeDelay: time.Hour})
	ctx := context.Background()
	k := newRotationKit(t, s)
	s.ResetProbe()
	trust, err := bundle.Build(bundle.PhaseTrust, k.current, k.next, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k.writeCACerts(t, ctx, trust)
	k.waitRootConfigMaps(t, ctx, trust.RootCert)
	k.waitHeld(t, ctx, "both roots in every envoy's ROOTCA", func(h sandbox.HeldCert) bool {
		if strings.HasPrefix(h.Proxy, sandbox.IstioNamespace+"/ztunnel") {
			return true // ztunnel has no PCDS (facts §2)
		}
		return h.Err == "" && sameSet(rootSet(h), k.oldRoot, k.newRoot)
	})
	const pcds = "update new trust bundle"
	lines := s.AgentLogLines(pcds)
	for _, l := range lines {
		t.Log(l)
	}
	for _, l := range s.AgentLogLines("generated new workload certificate") {
		t.Log(l)
	}
	if len(lines) < 2 {
		t.Errorf("expected the %q line from each of the 2 real agents, got %d", pcds, len(lines))
	}
	snap := s.Probe()
	t.Logf("probe during the trust phase: %d handshakes, %d failed", snap.Handshakes, snap.Failures)
	if snap.Failures != 0 {
		t.Errorf("trust phase with real agents: %d of %d handshakes failed", snap.Failures, snap.Handshakes)
	}
}

// TestSidecarsInjectedByIstiod: pods of the sidecar namespace get their
// istio-proxy container from the real istiod's injection webhook (called by
// the API server over TLS with the caBundle istiod patched), and the sandbox
// runs that container as a real pilot-agent with the env the injection
// produced.
func TestSidecarsInjectedByIstiod(t *testing.T) {
	s := startSandbox(t, sandbox.Options{Agent: sandbox.AgentReal, MultiRoot: true, XDSAgent: true, Nodes: 1, Workloads: 1, AppNamespaces: 1, Sidecars: 2})
	ctx := context.Background()
	var sidecars int
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		st, err := s.Status(ctx)
		if err != nil {
			return false, err
		}
		sidecars = 0
		for _, p := range st.Proxies {
			if p.Kind == "sidecar" && p.Available == 1 && strings.HasPrefix(p.Agent, "pilot-agent") {
				sidecars++
			}
		}
		return sidecars == 2, nil
	})
	if err != nil {
		st, _ := s.Status(ctx)
		t.Fatalf("%d of 2 injected sidecars hold a certificate from a real pilot-agent: %+v", sidecars, st.Proxies)
	}
	pods, err := s.Client().CoreV1().Pods(sandbox.SidecarNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		status := p.Annotations["sidecar.istio.io/status"]
		var env []string
		for _, c := range p.Spec.Containers {
			if c.Name == "istio-proxy" {
				for _, e := range c.Env {
					if e.Name == sandbox.EnvXDSAgent || e.Name == "PROXY_CONFIG" {
						env = append(env, e.Name+"="+e.Value)
					}
				}
			}
		}
		t.Logf("%s: injected %s; env %v", p.Name, status, env)
		if status == "" {
			t.Errorf("pod %s carries no sidecar.istio.io/status: not injected by istiod", p.Name)
		}
	}
	// istiod's validation controller patched its caBundle into the
	// validating webhook the sandbox registered fail-open, and switched it
	// to fail closed once a dry run of an invalid Gateway was denied.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		vwc, err := s.Client().AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, sandbox.ValidatorName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		wh := vwc.Webhooks[0]
		return len(wh.ClientConfig.CABundle) > 0 && wh.FailurePolicy != nil && *wh.FailurePolicy == admissionregistrationv1.Fail, nil
	}); err != nil {
		t.Fatalf("istiod did not patch validatingwebhookconfiguration %s (caBundle, failurePolicy Fail): %v", sandbox.ValidatorName, err)
	}
	// The three phases by hand (PCDS live: only ztunnel restarts), while the
	// admission check keeps creating injected pods through the webhook
	// whose caBundle istiod re-patches at every reload.
	k := newRotationKit(t, s)
	s.ResetProbe()
	now := time.Now()
	trust, err := bundle.Build(bundle.PhaseTrust, k.current, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	issue, err := bundle.Build(bundle.PhaseIssue, trust, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	retire, err := bundle.Build(bundle.PhaseRetire, issue, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		b    *bundle.Bundle
		what string
		ok   func(sandbox.HeldCert) bool
	}{
		{trust, "both roots trusted", func(h sandbox.HeldCert) bool { return sameSet(rootSet(h), k.oldRoot, k.newRoot) }},
		{issue, "every leaf from the new intermediate", func(h sandbox.HeldCert) bool { return h.Signer == k.signer }},
		{retire, "only the new root", func(h sandbox.HeldCert) bool { return h.Signer == k.signer && sameSet(rootSet(h), k.newRoot) }},
	} {
		k.writeCACerts(t, ctx, step.b)
		k.waitRootConfigMaps(t, ctx, step.b.RootCert)
		k.restart(t, ctx, ztunnelRef) // ztunnel 1.28 has no PCDS (facts §5)
		k.waitHeld(t, ctx, step.what, func(h sandbox.HeldCert) bool { return h.Err == "" && step.ok(h) })
	}
	// A few admission checks after the retire.
	before := s.Probe().Admissions
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return s.Probe().Admissions >= before+3, nil
	}); err != nil {
		t.Fatalf("the admission check made no progress after the retire (%d checks)", s.Probe().Admissions)
	}
	snap := s.Probe()
	side := snap.ByPairKind["sidecar->sidecar"]
	t.Logf("probe with sidecars through the rotation: %d handshakes (sidecar->sidecar %d), %d failed; admission checks %d, %d refused",
		snap.Handshakes, side.Handshakes, snap.Failures, snap.Admissions, snap.AdmissionFailures)
	if snap.Failures != 0 || side.Handshakes == 0 {
		t.Errorf("probe with injected sidecars: %d of %d failed, %d sidecar->sidecar", snap.Failures, snap.Handshakes, side.Handshakes)
	}
	if snap.AdmissionFailures != 0 {
		t.Errorf("%d of %d admission checks failed during the rotation: %+v", snap.AdmissionFailures, snap.Admissions, snap.Events)
	}
	assertStaleCABundleCounted(t, s, k.current.RootCert)
}

// assertStaleCABundleCounted is the negative case of the admission check:
// a webhook configuration that istiod does not patch (as one a GitOps tool
// owns would be), calling istiod's injection endpoint with a caBundle that
// holds only staleRoot, the root retired by the rotation. Every pod
// creation in the injected namespace must now fail, and the check must
// count it, with the API server's certificate error as the reason. Once
// it is gone, the checks pass again.
func assertStaleCABundleCounted(t *testing.T, s *sandbox.Sandbox, staleRoot []byte) {
	t.Helper()
	ctx := context.Background()
	live, err := s.Client().AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, sandbox.InjectorName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "stale-injector"}}
	wh := *live.Webhooks[0].DeepCopy()
	wh.Name = "stale.injector.example.com"
	// The API server keys its webhook clients by caBundle bytes (not by
	// configuration) and keeps their connections alive: a configuration
	// holding exactly the bytes istiod patched in before the rotation would
	// reuse a connection opened under the old serving certificate and pass
	// until it closes. The root as a GitOps repository would hold it, with
	// a comment, is a new client and a new handshake.
	wh.ClientConfig.CABundle = append([]byte("# istiod root, installed with the chart\n"), staleRoot...)
	stale.Webhooks = []admissionregistrationv1.MutatingWebhook{wh}
	before, t0 := s.Probe(), time.Now()
	if _, err := s.Client().AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, stale, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var reason string
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		snap := s.Probe()
		for _, e := range snap.Events {
			if e.Type == mesh.EventAdmission && e.Time.After(t0) && strings.Contains(e.Reason, "stale.injector.example.com") {
				reason = e.Reason
			}
		}
		return snap.AdmissionFailures > before.AdmissionFailures && reason != "", nil
	}); err != nil {
		t.Fatalf("a webhook whose caBundle holds only the retired root was not counted as an admission failure: %+v", s.Probe())
	}
	t.Logf("stale caBundle counted: %s", reason)
	if !strings.Contains(reason, "x509") && !strings.Contains(reason, "certificate") {
		t.Errorf("admission failure with a stale caBundle does not name the certificate error: %s", reason)
	}
	if err := s.Client().AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, stale.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server's webhook cache lets a failure or two through after
	// the delete; after that, the checks pass again.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		failures := s.Probe().AdmissionFailures
		return waitChecks(ctx, s, 4) && s.Probe().AdmissionFailures == failures, nil
	}); err != nil {
		t.Fatalf("admission checks still fail after the stale webhook was deleted: %+v", s.Probe())
	}
}

// waitChecks waits until n more admission checks have run.
func waitChecks(ctx context.Context, s *sandbox.Sandbox, n int64) bool {
	before := s.Probe().Admissions
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return s.Probe().Admissions >= before+n, nil
	}) == nil
}
