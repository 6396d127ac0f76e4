package sandbox_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// TestUpDetachedStatusProbeDown drives the fixed interface of `meshca
// sandbox` as a user does, through the binary: up --detach returns once
// ready, status and probe answer (probe's JSON schema included), and down
// leaves no process behind.
func TestUpDetachedStatusProbeDown(t *testing.T) {
	bin, err := cluster.FindBinDir()
	if err == nil && len((cluster.Config{BinDir: bin}).Missing()) > 0 {
		err = os.ErrNotExist
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("control-plane binaries not built: %v", err)
		}
		t.Skipf("control-plane binaries not built (%v): run make controlplane", err)
	}
	_, file, _, _ := runtime.Caller(0)
	meshca := filepath.Join(t.TempDir(), "meshca")
	build := exec.Command("go", "build", "-o", meshca, "./cmd/meshca")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "sb")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(meshca, args...)
		cmd.Env = append(os.Environ(), "MESHCA_BIN_DIR="+bin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("meshca %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	defer func() { _ = exec.Command(meshca, "sandbox", "down", "--dir", dir).Run() }()

	out := run("sandbox", "up", "--dir", dir, "--nodes", "2", "--workloads", "2", "--detach")
	if !strings.Contains(out, "sandbox ready") {
		t.Fatalf("up --detach: %s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "kubeconfig")); err != nil {
		t.Fatalf("no kubeconfig written: %v", err)
	}
	if out := run("sandbox", "status", "--dir", dir); !strings.Contains(out, "ztunnel") {
		t.Errorf("status does not list the ztunnels:\n%s", out)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal([]byte(run("sandbox", "probe", "--dir", dir, "-o", "json")), &probe); err != nil {
		t.Fatalf("probe -o json: %v", err)
	}
	for _, key := range []string{"handshakes", "failures", "failuresByPair", "since"} {
		if _, ok := probe[key]; !ok {
			t.Errorf("probe JSON lacks %q", key)
		}
	}
	run("sandbox", "down", "--dir", dir)
	ps, _ := exec.Command("pgrep", "-f", dir).Output()
	if pids := strings.TrimSpace(string(ps)); pids != "" {
		t.Errorf("processes left after down: %s", pids)
	}
}
