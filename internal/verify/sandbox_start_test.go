// This file wires the sandbox tests of sandbox_test.go to internal/sandbox:
// sandbox.Start with ISTIO_MULTIROOT_MESH and PROXY_CONFIG_XDS_AGENT on,
// ztunnel 1.28 behaviour and day-long certificates. Without the control-plane
// binaries the tests skip, unless CI=true.

package verify_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

func init() {
	startSandbox = func(tb testing.TB, spec sandboxSpec) string {
		tb.Helper()
		bin, err := cluster.FindBinDir()
		if err == nil {
			if missing := (cluster.Config{BinDir: bin}).Missing(); len(missing) > 0 {
				err = fmt.Errorf("control-plane binaries missing (%s): run make controlplane", strings.Join(missing, ", "))
			}
		}
		if err != nil {
			if os.Getenv("CI") == "true" {
				tb.Fatalf("sandbox: %v", err)
			}
			tb.Skipf("sandbox not available (CI=true makes this fatal): %v", err)
		}
		opts := sandbox.Options{
			Dir:            tb.TempDir(),
			BinDir:         bin,
			Nodes:          spec.Nodes,
			Workloads:      spec.Workloads,
			MultiRoot:      true,
			XDSAgent:       true,
			ZtunnelVersion: "1.28",
			// Long-lived certificates: nothing refreshes during a test, so
			// a ztunnel converges only when restarted.
			CertTTL: 24 * time.Hour,
			Logf:    tb.Logf,
		}
		if spec.Envoys > 1 {
			// One waypoint per app namespace, plus the ingress gateway.
			opts.AppNamespaces, opts.ServiceAccounts = spec.Envoys-1, 1
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		s, err := sandbox.Start(ctx, opts)
		if err != nil {
			tb.Fatalf("start sandbox: %v", err)
		}
		tb.Cleanup(func() {
			if err := s.Stop(); err != nil {
				tb.Errorf("stop sandbox: %v", err)
			}
		})
		return s.Kubeconfig()
	}
}
