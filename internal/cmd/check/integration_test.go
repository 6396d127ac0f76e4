package check

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/preflight"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// TestCheckSandbox runs `meshca check --kubeconfig K -o json` against a real
// control plane and a real istiod: the default sandbox is ready; without
// ISTIO_MULTIROOT_MESH it is not, for that reason only.
func TestCheckSandbox(t *testing.T) {
	tests := map[string]struct {
		opts   sandbox.Options
		code   int
		errors []string
	}{
		"a default sandbox is ready": {
			opts: sandbox.Options{MultiRoot: true, XDSAgent: true},
			code: cli.ExitOK,
		},
		"without ISTIO_MULTIROOT_MESH it is not": {
			opts:   sandbox.Options{MultiRoot: false, XDSAgent: true},
			code:   cli.ExitFailure,
			errors: []string{preflight.CategoryIstiod + "/" + preflight.CheckMultiRoot},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			opts := tc.opts
			opts.Nodes, opts.Workloads = 2, 2
			s := sandboxtest.Start(t, opts)
			got := runWith(t, connect, time.Now(), strings.NewReplacer(), "--kubeconfig", s.Kubeconfig(), "-o", "json")
			if got.code != tc.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s\nstdout:\n%s", got.code, tc.code, got.err, got.out)
			}
			var r preflight.Report
			if err := json.Unmarshal([]byte(got.out), &r); err != nil {
				t.Fatalf("output is not a Preflight document: %v\n%s", err, got.out)
			}
			var errs []string
			for _, cat := range r.Categories {
				for _, c := range cat.Checks {
					switch c.Status {
					case preflight.StatusError:
						errs = append(errs, cat.Name+"/"+c.Name)
					case preflight.StatusWarning:
						t.Errorf("unexpected warning: %s", c)
					}
				}
			}
			if strings.Join(errs, ",") != strings.Join(tc.errors, ",") {
				t.Errorf("errors = %v, want %v", errs, tc.errors)
			}
			if len(r.Categories) != 7 {
				t.Errorf("%d categories, want all 7:\n%s", len(r.Categories), got.out)
			}
			if tc.code == cli.ExitFailure {
				c, _ := r.Check(preflight.CategoryIstiod, preflight.CheckMultiRoot)
				if !strings.Contains(c.Hint, "--set pilot.env.ISTIO_MULTIROOT_MESH=true") {
					t.Errorf("MULTIROOT error without the Helm hint: %s", c)
				}
			}
		})
	}
}

func TestMain(m *testing.M) {
	// The sandbox's simulated proxies log every certificate at Info; keep
	// test output to what matters.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
