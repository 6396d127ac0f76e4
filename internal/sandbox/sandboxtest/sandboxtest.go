// Package sandboxtest starts a sandbox for a test or benchmark: it skips
// with a message when the control-plane binaries are not built (make
// controlplane), fails instead under CI=true where they must be, and stops
// the sandbox when the test ends.
package sandboxtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// AgentEnv is the variable that, set to "real" or "simulated", chooses what backs the envoy
// pods of every sandbox a test starts without choosing (Options.Agent), so
// the same scenario tests run against the real pilot-agent.
const AgentEnv = "MESHCA_SANDBOX_AGENT"

// SidecarsEnv is the variable that, set to a number, adds that many sidecar workloads
// injected by istiod (Options.Sidecars) to every sandbox a test starts
// without any, so the same scenario tests cover the sidecar path.
const SidecarsEnv = "MESHCA_SANDBOX_SIDECARS"

// KeepFailedEnv is the variable that, set to anything, keeps the directory
// of a sandbox whose test failed (its logs: istiod, the control plane,
// every real pilot-agent) instead of removing it.
const KeepFailedEnv = "MESHCA_KEEP_FAILED_SANDBOX"

// Start starts a sandbox with opts in a temporary directory (Dir and BinDir
// are filled in; Logf too when unset).
func Start(tb testing.TB, opts sandbox.Options) *sandbox.Sandbox {
	tb.Helper()
	if opts.Agent == "" {
		opts.Agent = os.Getenv(AgentEnv)
	}
	if v := os.Getenv(SidecarsEnv); v != "" && opts.Sidecars == 0 {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			tb.Fatalf("%s=%q: want a number of sidecar workloads", SidecarsEnv, v)
		}
		opts.Sidecars = n
	}
	bin, err := cluster.FindBinDir()
	if err == nil {
		if missing := (cluster.Config{BinDir: bin}).Missing(); len(missing) > 0 {
			err = fmt.Errorf("missing %s", strings.Join(missing, ", "))
		}
	}
	if err != nil {
		msg := fmt.Sprintf("control-plane binaries not built (%v): run make controlplane", err)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	dir, err := os.MkdirTemp("", "meshca-sandbox-")
	if err != nil {
		tb.Fatal(err)
	}
	// Registered first, so it runs after the sandbox has stopped.
	tb.Cleanup(func() {
		if tb.Failed() && os.Getenv(KeepFailedEnv) != "" {
			tb.Logf("%s: kept the failed test's sandbox directory %s (logs of istiod, the API server, every pilot-agent)", KeepFailedEnv, dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	opts.Dir, opts.BinDir = dir, bin
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	s, err := sandbox.Start(ctx, opts)
	if err != nil {
		tb.Fatalf("start sandbox: %v", err)
	}
	tb.Logf("sandbox with %d nodes up in %s", opts.Nodes, time.Since(t0).Round(time.Millisecond))
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("stop sandbox: %v", err)
		}
	})
	return s
}

// Healthy returns opts with both flags of istio-ca-facts.md §2 on
// (ISTIO_MULTIROOT_MESH and PROXY_CONFIG_XDS_AGENT): a mesh ready to rotate.
func Healthy(opts sandbox.Options) sandbox.Options {
	opts.MultiRoot, opts.XDSAgent = true, true
	return opts
}
