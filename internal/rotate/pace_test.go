package rotate_test

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/preflight"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// TestPaceScenarios rotates a sandbox with a 2-minute certificate lifetime
// per ztunnel version (1.28.1, 1.28.6, 1.30.0) and pace, and logs the row
// the issue asks for: | ztunnel | pace | handshakes | failures | refused |
// long-lived connections | resets | failed CSRs | ztunnel restarts | wall |. Gentle restarts ztunnel exactly once on a
// version without CA_CERT_WATCHER and never on one with it; fast restarts
// only proxies that lagged when it looked. No scenario fails a handshake.
func TestPaceScenarios(t *testing.T) {
	for _, version := range []string{"1.28", "1.28.6", "1.30"} {
		for _, pace := range []rotate.Pace{rotate.PaceGentle, rotate.PaceFast} {
			t.Run(version+"/"+string(pace), func(t *testing.T) {
				t.Parallel()
				// A 3 s grace period (drain deadline 2 s) lets every reset a
				// restart causes happen before the probe is read.
				s := startSandbox(t, healthy(sandbox.Options{Nodes: 2, CertTTL: 2 * time.Minute, ZtunnelVersion: version, GracePeriod: 3 * time.Second}))
				tg := newTarget(t, s, "sandbox")
				ctx := context.Background()
				ds, err := s.Client().AppsV1().DaemonSets(sandbox.IstioNamespace).Get(ctx, sandbox.ZtunnelName, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				tag := mesh.ImageTag(ds.Spec.Template.Spec.Containers[0].Image)
				watches, _ := preflight.ZtunnelWatchesCACert(tag)
				root := newRoot(t)
				var events eventLog
				opts := options(root, bundle.PhaseRetire, &events.log)
				opts.Pace, opts.Observer, opts.VerifyTimeout = pace, &events, 0
				s.ResetProbe()
				t0 := time.Now()
				eng := rotate.New([]*rotate.Cluster{tg.cluster}, opts)
				if err := eng.Run(ctx); err != nil {
					t.Fatalf("rotate: %v\n%s", err, events.log.String())
				}
				wall := time.Since(t0).Round(time.Second)
				tg.assertFinal(t, root)
				if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
					return s.Draining() == 0, nil
				}); err != nil {
					t.Fatalf("%d restarted proxies still draining a minute after the rotation", s.Draining())
				}
				zt := "daemonset/" + sandbox.IstioNamespace + "/" + sandbox.ZtunnelName
				restarts := eng.Summary().RestartsOf(zt)
				snap := s.Probe()
				t.Logf("| %s | %s | %d | %d | %d | %d | %d | %d | %d | %s |", tag, pace,
					snap.Handshakes, snap.Failures, snap.Refused, snap.Connections, snap.Resets, snap.IssuanceFailures, restarts, wall)
				if snap.Refused != 0 || snap.IssuanceFailures != 0 {
					t.Errorf("%s %s: %d refused, %d failed CSRs; want 0", tag, pace, snap.Refused, snap.IssuanceFailures)
				}
				for _, r := range eng.Summary().Restarts {
					t.Logf("  restart %s %s (%s) x%d", r.Phase, r.Workload, r.Reason, r.Count)
				}
				t.Logf("events:\n%s", events.log.String())
				assertNoFailures(t, s, version+" "+string(pace))
				if pace == rotate.PaceGentle {
					want := 1
					if watches {
						want = 0
					}
					if restarts != want {
						t.Errorf("gentle on ztunnel %s restarted ztunnel %d times, want %d\n%s", tag, restarts, want, events.log.String())
					}
					if want == 0 && snap.Resets != 0 {
						t.Errorf("gentle on ztunnel %s restarted nothing but %d long-lived connections reset", tag, snap.Resets)
					}
					for _, r := range eng.Summary().Restarts {
						if r.Reason != rotate.ReasonCAChannel {
							t.Errorf("gentle restarted %s in phase %s for %s", r.Workload, r.Phase, r.Reason)
						}
					}
					return
				}
				// fast: each restart for lag follows a verification of the same
				// phase that found proxies lagging.
				lagged := map[rotate.Phase]bool{}
				for _, ev := range events.events {
					switch {
					case ev.Kind == rotate.EventLagging && ev.Converged < ev.Total:
						lagged[ev.Phase] = true
					case ev.Kind == rotate.EventRestartStarted && ev.Reason == rotate.ReasonLagging && !lagged[ev.Phase]:
						t.Errorf("fast restarted %s in phase %s although nothing lagged", ev.Workload, ev.Phase)
					case ev.Kind == rotate.EventRestartStarted && strings.HasPrefix(ev.Workload, "deployment/") && ev.Reason == rotate.ReasonLagging:
						t.Errorf("fast restarted envoy workload %s although every envoy has live PCDS", ev.Workload)
					}
				}
			})
		}
	}
}
