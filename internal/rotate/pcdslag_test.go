package rotate_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// TestFastPaceRestartsAnEnvoyWhosePCDSLags: --pace fast leaves an envoy
// whose PCDS is live to catch up by itself. One that has not after
// PCDSGrace (here half the verify timeout) will not before its next
// certificate rotation, as a real istio-agent whose ROOTCA kept a retired
// root: it is restarted with reason pcds-lag, only its workload, and the
// rotation completes without a failed handshake.
func TestFastPaceRestartsAnEnvoyWhosePCDSLags(t *testing.T) {
	// The fault is injected into a simulated agent.
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2, Agent: sandbox.AgentSimulated}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var stalled string
	for _, p := range st.Proxies {
		if p.Kind == "waypoint" {
			stalled = p.Pod
			break
		}
	}
	ns, name, _ := strings.Cut(stalled, "/")
	if stalled == "" || !s.StallPCDS(ns, name) {
		t.Fatalf("no waypoint on a simulated agent to stall (%+v)", st.Proxies)
	}
	root := newRoot(t)
	events := &eventLog{}
	opts := options(root, bundle.PhaseRetire, nil)
	opts.Observer = events
	opts.Pace = rotate.PaceFast
	opts.VerifyTimeout = 40 * time.Second
	s.ResetProbe()
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, opts).Run(ctx); err != nil {
		t.Fatalf("rotate: %v\n%s", err, events.log.String())
	}
	t.Logf("stalled %s\n%s", stalled, events.log.String())
	var lagRestarts []string
	for _, ev := range events.of(rotate.EventRestartStarted) {
		if ev.Reason == rotate.ReasonPCDSLag {
			lagRestarts = append(lagRestarts, ev.Workload)
		}
	}
	// The waypoint's Deployment is named after its pod's prefix.
	if len(lagRestarts) != 1 || !strings.HasPrefix(lagRestarts[0], "deployment/"+ns+"/") || !strings.HasPrefix(name, strings.TrimPrefix(lagRestarts[0], "deployment/"+ns+"/")+"-") {
		t.Errorf("pcds-lag restarts %v, want exactly the deployment of %s", lagRestarts, stalled)
	}
	assertNoFailures(t, s, "rotation with a stalled PCDS")
	tg.assertFinal(t, root)
}
