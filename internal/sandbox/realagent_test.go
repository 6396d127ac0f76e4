package sandbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/sandbox"
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
	time.Sleep(300 * time.Millisecond) // some probe rounds
	snap := s.Probe()
	t.Logf("%d envoy pods on the real agent; probe: %d handshakes, %d failed", envoys, snap.Handshakes, snap.Failures)
	if snap.Handshakes == 0 || snap.Failures != 0 {
		t.Errorf("probe through the real agents: %d handshakes, %d failed", snap.Handshakes, snap.Failures)
	}
}
