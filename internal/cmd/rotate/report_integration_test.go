package rotate_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/report/htmlreport"
	"github.com/meshca/meshca/internal/report/htmlreport/browsertest"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// run runs meshca in-process; it returns the exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	code := app.Run(ctx, args, &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}})
	return code, out.String(), errOut.String()
}

func readReport(t *testing.T, path string) *htmlreport.Model {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := htmlreport.ReadModel(path, data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestRotationReports rotates the sandbox's CA phased, then one-step, each
// with --report under the probe: both reports open in headless Chromium
// without console errors and with one band per phase, and pass tidy.
// `meshca report` rebuilt from the cluster alone after the phased rotation
// equals the --report one on everything it can know, and with the saved
// event stream on everything but the fleet's verification time.
func TestRotationReports(t *testing.T) {
	chromium := browsertest.NeedTool(t, "chromium", "chromium-browser")
	tidy := browsertest.NeedTool(t, "tidy")
	sb := sandboxtest.Start(t, sandboxtest.Healthy(sandbox.Options{Nodes: 2, Workloads: 4, ProbeInterval: 20 * time.Millisecond,
		GracePeriod: 3 * time.Second, Logf: func(string, ...any) {}}))
	dir := os.Getenv("MESHCA_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	newRoot := func(name string) string {
		root := filepath.Join(t.TempDir(), name)
		if code, _, stderr := run(t, "ca", "root", "--out", root, "--key-type", "ecdsa-p256"); code != 0 {
			t.Fatalf("meshca ca root: exit %d\n%s", code, stderr)
		}
		return root
	}
	rotateArgs := func(extra ...string) []string {
		return append([]string{"rotate", "--kubeconfig", sb.Kubeconfig(), "--yes", "--key-type", "ecdsa-p256", "--sandbox", sb.Dir(),
			"--reload-timeout", "1m", "--rollout-timeout", "2m", "--verify-timeout", "3m", "-o", "json"}, extra...)
	}
	rotate := func(report string, extra ...string) string {
		args := rotateArgs(append(extra, "--report", report)...)
		code, stdout, stderr := run(t, args...)
		if code != 0 {
			t.Fatalf("meshca %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}
	check := func(path string, m *htmlreport.Model) {
		t.Helper()
		page, err := browsertest.Open(context.Background(), chromium, path, false)
		if err != nil {
			t.Fatal(err)
		}
		browsertest.Check(t, page, htmlreport.BandsPerCluster(m))
		png := strings.TrimSuffix(path, ".html") + ".png"
		if err := os.WriteFile(png, page.Screenshot, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(tidy, "-quiet", "-errors", path).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("tidy %s: %v\n%s", path, err, out)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d bytes, tidy said: %q; screenshot %s (page %dx%d CSS px)", path, st.Size(), bytes.TrimSpace(out), png, page.Width, page.Height)
	}

	// Phased, with the events saved as -o json writes them.
	phasedHTML := filepath.Join(dir, "phased.html")
	events := filepath.Join(dir, "phased-events.jsonl")
	if err := os.WriteFile(events, []byte(rotate(phasedHTML, "--root", newRoot("root-1"))), 0o600); err != nil {
		t.Fatal(err)
	}
	phased := readReport(t, phasedHTML)
	c := phased.Clusters[0]
	var phases []string
	for _, b := range c.Bands {
		phases = append(phases, b.Phase)
		if b.Written == nil || b.Proven == nil {
			t.Errorf("phase %s: written %v, proven %v; want both", b.Phase, b.Written, b.Proven)
		}
	}
	if strings.Join(phases, ",") != "trust,issue,retire" || c.Strategy != "phased" {
		t.Errorf("phased report: strategy %q, phases %v; want phased, trust,issue,retire", c.Strategy, phases)
	}
	if c.OldSigner == nil || c.OldSigner.Subject == "" || c.NewRoot == nil || c.NewRoot.Subject == "" || c.BackupSecret == "" {
		t.Errorf("phased report header lacks the old signer, the new root or the backup: %+v", c)
	}
	if len(c.Convergence) == 0 || len(phased.Probe) < 2 || len(c.Fleet) == 0 || phased.RunBy == "" {
		t.Errorf("phased report: %d convergence series, %d probe samples, %d proxies, run by %q; want some of each", len(c.Convergence), len(phased.Probe), len(c.Fleet), phased.RunBy)
	}
	for _, r := range c.Fleet {
		if r.Status != "match" && r.Status != "nothing-to-verify" {
			t.Errorf("after the rotation %s %s/%s is %s", r.Kind, r.Namespace, r.Name, r.Status)
		}
	}
	check(phasedHTML, phased)

	// Rebuilt from the cluster alone, then with the event stream.
	rebuiltHTML := filepath.Join(dir, "rebuilt.html")
	if code, _, stderr := run(t, "report", "--kubeconfig", sb.Kubeconfig(), "-o", rebuiltHTML); code != 0 {
		t.Fatalf("meshca report: exit %d\n%s", code, stderr)
	}
	rebuilt := readReport(t, rebuiltHTML)
	if d := cmp.Diff(phased.Known(), rebuilt.Known()); d != "" {
		t.Errorf("meshca report from the cluster differs from rotate --report on what it can know (-rotate +report):\n%s", d)
	} else {
		t.Logf("meshca report from the cluster alone equals rotate --report on the header, %d phases, %d proxies and %d findings", len(c.Bands), len(c.Fleet), len(c.Findings))
	}
	withEvents := filepath.Join(dir, "rebuilt-events.html")
	if code, _, stderr := run(t, "report", "--kubeconfig", sb.Kubeconfig(), "-o", withEvents, "--events", events); code != 0 {
		t.Fatalf("meshca report --events: exit %d\n%s", code, stderr)
	}
	if d := cmp.Diff(phased.Clusters, readReport(t, withEvents).Clusters, cmpopts.IgnoreFields(htmlreport.Cluster{}, "FleetTime")); d != "" {
		t.Errorf("meshca report --events differs from rotate --report (-rotate +report):\n%s", d)
	} else {
		t.Logf("meshca report --events equals rotate --report on every cluster field but the fleet's verification time (%d markers, %d restarts, %d series)", len(c.Markers), len(c.Restarts), len(c.Convergence))
	}
	check(rebuiltHTML, rebuilt)

	// One-step: the field note's procedure, under the same probe.
	oneStepHTML := filepath.Join(dir, "one-step.html")
	rotate(oneStepHTML, "--root", newRoot("root-2"), "--strategy", "one-step", "--i-accept-downtime")
	oneStep := readReport(t, oneStepHTML)
	o := oneStep.Clusters[0]
	if o.Strategy != "one-step" || len(o.Bands) != 1 || o.Bands[0].Phase != "issue" || len(o.Restarts) == 0 {
		t.Errorf("one-step report: strategy %q, %d bands, %d restarts; want one-step, one issue band, restarts", o.Strategy, len(o.Bands), len(o.Restarts))
	}
	if n := len(oneStep.Probe); n >= 2 {
		first, last := oneStep.Probe[0], oneStep.Probe[n-1]
		t.Logf("one-step probe over the run: %d handshakes, %d failed, %d refused, %d resets", last.Handshakes-first.Handshakes, last.Failures-first.Failures, last.Refused-first.Refused, last.Resets-first.Resets)
	}
	if n := len(phased.Probe); n >= 2 {
		first, last := phased.Probe[0], phased.Probe[n-1]
		t.Logf("phased probe over the run: %d handshakes, %d failed, %d refused, %d resets", last.Handshakes-first.Handshakes, last.Failures-first.Failures, last.Refused-first.Refused, last.Resets-first.Resets)
	}
	check(oneStepHTML, oneStep)

	// A run that fails still writes its report, up to where it stopped:
	// the one-step rotation still trusts the old root (it is not finished),
	// so a rotation to another root is refused.
	failedHTML := filepath.Join(dir, "failed.html")
	code, _, stderr := run(t, rotateArgs("--root", newRoot("root-3"), "--report", failedHTML)...)
	if code == 0 {
		t.Fatalf("a rotation to a third root during the one-step one succeeded\n%s", stderr)
	}
	failed := readReport(t, failedHTML)
	if !strings.Contains(failed.RunError, "in progress") {
		t.Errorf("report of the refused run: run error %q; want the refusal", failed.RunError)
	}
	if f := failed.Clusters[0]; len(f.Bands) != 1 || f.Bands[0].Phase != "issue" || f.Strategy != "one-step" {
		t.Errorf("report of the refused run: strategy %q, bands %+v; want the one-step rotation", f.Strategy, f.Bands)
	}
	t.Logf("refused run (exit %d, %s): report %s written, state %q", code, strings.TrimSpace(stderr), failedHTML, failed.Clusters[0].State)
}
