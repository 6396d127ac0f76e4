package scenario_test

import (
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/mesh"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// cross sums the probe's cross-cluster pair kinds.
func cross(s mesh.Snapshot) (c mesh.KindCounts) {
	for kind, k := range s.ByPairKind {
		if strings.HasPrefix(kind, "cross-cluster ") {
			c.Handshakes += k.Handshakes
			c.Failures += k.Failures
			c.Refused += k.Refused
			c.Connections += k.Connections
			c.Resets += k.Resets
		}
	}
	return c
}

// TestTwoClustersSharingARoot rotates both clusters of a two-cluster
// sandbox (one root, an intermediate each) phase by phase with
// `--context cluster-1 --context cluster-2`: cross-cluster mTLS (ztunnel of
// one cluster to the ztunnels and waypoints of the other, both ways) must
// not fail while the clusters move through the phases.
func TestTwoClustersSharingARoot(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{Clusters: 2}))
	if n := len(sb.Members()); n != 2 {
		t.Fatalf("%d clusters started, want 2", n)
	}
	rows := phased(t, sb, "two clusters: phased, both contexts", "--context", "cluster-1", "--context", "cluster-2", "--root", newRoot(t))
	logTable(t, rows)
	assertNoDisruption(t, rows)
	for _, r := range rows {
		c := cross(r.s)
		t.Logf("%s: cross-cluster handshakes %d, failures %d, refused %d, long-lived %d, resets %d", r.phase, c.Handshakes, c.Failures, c.Refused, c.Connections, c.Resets)
		if c.Handshakes == 0 {
			t.Errorf("%s: no cross-cluster handshake was made", r.phase)
		}
	}
}

// TestOneStepInOneClusterBreaksCrossClusterTraffic runs the field note's
// procedure in cluster-1 alone: cluster-2's proxies do not trust the new
// root, so cross-cluster pairs must fail — the failure a shared-root mesh
// risks when one cluster moves ahead.
func TestOneStepInOneClusterBreaksCrossClusterTraffic(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{Clusters: 2}))
	r := measure(t, sb, "two clusters: one-step in cluster-1 only", "all",
		rotateArgs(sb, "--context", "cluster-1", "--root", newRoot(t), "--strategy", "one-step", "--i-accept-downtime")...)
	logTable(t, []row{r})
	c := cross(r.s)
	t.Logf("cross-cluster: %d handshakes, %d failures", c.Handshakes, c.Failures)
	if c.Failures == 0 {
		t.Errorf("one-step in one cluster failed no cross-cluster handshake (%d made)\n%s", c.Handshakes, events(r.s))
	}
}
