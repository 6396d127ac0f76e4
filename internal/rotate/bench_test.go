package rotate_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// BenchmarkRotation measures a whole phased rotation on sandboxes of 3 and
// 20 nodes: wall time, the part spent waiting for rollouts and istiod versus
// meshca's own work, and the HTTP requests meshca sent to the API server.
//
//	go test -run '^$' -bench Rotation -benchtime 1x ./internal/rotate/
func BenchmarkRotation(b *testing.B) {
	for _, nodes := range []int{3, 20} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			s := startSandbox(b, healthy(sandbox.Options{Nodes: nodes, Workloads: 2 * nodes}))
			tg := newTarget(b, s, "sandbox")
			b.ResetTimer()
			for b.Loop() {
				var log bytes.Buffer
				tg.requests.Store(0)
				t0 := time.Now()
				eng := rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(b), bundle.PhaseRetire, &log))
				if err := eng.Run(context.Background()); err != nil {
					b.Fatalf("rotate: %v\n%s", err, log.String())
				}
				wall := time.Since(t0)
				var waiting time.Duration
				for _, st := range eng.Summary().Steps {
					waiting += st.Waiting
				}
				b.ReportMetric(wall.Seconds(), "wall-s")
				b.ReportMetric(waiting.Seconds(), "waiting-s")
				b.ReportMetric((wall - waiting).Seconds(), "meshca-s")
				b.ReportMetric(float64(tg.requests.Load()), "api-requests")
				snap := s.Probe()
				b.ReportMetric(float64(snap.Failures), "failed-handshakes")
			}
		})
	}
}
