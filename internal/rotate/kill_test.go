package rotate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// buildMeshca builds the meshca binary for tests that run it as a process.
func buildMeshca(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(t.TempDir(), "meshca")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/meshca")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build meshca: %v\n%s", err, out)
	}
	return bin
}

func writeRoot(t *testing.T, root *pki.CA) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := bundle.WriteRoot(dir, root, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

// killAt is a point of a rotation, named by its event: kind, phase and the
// kind of workload a restart concerns.
type killAt struct {
	kind     rotate.EventKind
	phase    rotate.Phase
	workload string
}

func (k killAt) matches(ev rotate.Event) bool {
	return ev.Kind == k.kind && ev.Phase == k.phase && strings.HasPrefix(ev.Workload, k.workload)
}

func (k killAt) String() string {
	s := string(k.kind)
	if k.phase != "" {
		s += " " + string(k.phase)
	}
	if k.workload != "" {
		s += " " + k.workload
	}
	return s
}

// TestKillNineAnywhereThenResume kills `meshca rotate` with SIGKILL at many
// points (between and inside phases), found in its event stream (-o json),
// and re-runs it each time: every run continues from what the cluster
// holds, the probe sees no failed handshake, and no CA material is lost.
func TestKillNineAnywhereThenResume(t *testing.T) {
	bin := buildMeshca(t) // before the sandbox: a build takes minutes on a loaded machine
	s := startSandbox(t, healthy(sandbox.Options{}))
	tg := newTarget(t, s, "sandbox")
	root := newRoot(t)
	rootDir := writeRoot(t, root)
	s.ResetProbe()
	rotateArgs := func() []string {
		return []string{"rotate", "--kubeconfig", s.Kubeconfig(), "--root", rootDir, "--key-type", "ecdsa-p256", "--yes", "--reload-timeout", "30s", "--verify-timeout", "1m", "-o", "json"}
	}
	// Kill points in rotation order; each run is killed at the next one, so
	// that every run resumes from the state the previous kill left.
	targets := []killAt{
		{kind: rotate.EventBackup},
		{kind: rotate.EventRecorded},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseTrust},
		{kind: rotate.EventIstiodWaiting, phase: rotate.PhaseTrust},
		{kind: rotate.EventRestartStarted, phase: rotate.PhaseTrust, workload: "daemonset/"},
		{kind: rotate.EventRestartFinished, phase: rotate.PhaseTrust, workload: "daemonset/"},
		{kind: rotate.EventVerifying, phase: rotate.PhaseTrust},
		{kind: rotate.EventPhaseProven, phase: rotate.PhaseTrust},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseIssue},
		{kind: rotate.EventIstiodWaiting, phase: rotate.PhaseIssue},
		{kind: rotate.EventRestartStarted, phase: rotate.PhaseIssue, workload: "daemonset/"},
		{kind: rotate.EventVerifying, phase: rotate.PhaseIssue},
		{kind: rotate.EventPhaseProven, phase: rotate.PhaseIssue},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseRetire},
		{kind: rotate.EventRestartStarted, phase: rotate.PhaseRetire, workload: "daemonset/"},
		{kind: rotate.EventVerifying, phase: rotate.PhaseRetire},
	}
	points := killAndResume(t, bin, rotateArgs, targets)
	var final bytes.Buffer
	cmd := exec.Command(bin, rotateArgs()...)
	cmd.Stderr = &final
	if err := cmd.Run(); err != nil {
		t.Fatalf("final run: %v\n%s", err, final.String())
	}
	t.Logf("killed at %d distinct points:", len(points))
	for p, n := range points {
		t.Logf("  %dx %s", n, p)
	}
	if len(points) < 10 {
		t.Errorf("only %d distinct kill points, want at least 10", len(points))
	}
	tg.assertFinal(t, root)
	assertNoFailures(t, s, "rotations killed with SIGKILL and resumed")
	// No lost material: the backup is the cacerts the rotation started from.
	rec := readRecord(t, tg)
	if !tg.backup(t, rec.BackupSecret).Equal(tg.original) {
		t.Errorf("backup %s is not the cacerts the rotation started from", rec.BackupSecret)
	}
}

// killAndResume runs meshca with args() again and again, killing each run
// with SIGKILL at the next of targets found in its event stream (-o json),
// so that every run resumes from the state the previous kill left. It
// returns how often it killed at each point.
func killAndResume(t *testing.T, bin string, args func() []string, targets []killAt) map[string]int {
	t.Helper()
	points := map[string]int{}
	rotateArgs := args
	for next := 0; next < len(targets); {
		cmd := exec.Command(bin, rotateArgs()...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(stdout)
		var last rotate.Event
		hit := -1
		for hit < 0 {
			var ev rotate.Event
			if err := dec.Decode(&ev); err != nil {
				break
			}
			last = ev
			for i := next; i < len(targets); i++ {
				if targets[i].matches(ev) {
					_ = cmd.Process.Kill() // SIGKILL: no cleanup of any kind
					hit = i
					break
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		if hit < 0 {
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("run to be killed at %s exited %d; last event %+v\n%s", targets[next], code, last, stderr.String())
			}
			t.Logf("the run finished before reaching %s", targets[next])
			break
		}
		points[targets[hit].String()]++
		next = hit + 1
	}
	return points
}

// TestOneStepStrategyFailsHandshakesAndSaysSo runs the field note's
// procedure through the CLI on the sandbox: the probe records failures and
// meshca's summary reports them.
func TestOneStepStrategyFailsHandshakesAndSaysSo(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{}))
	root := newRoot(t)
	rootDir := writeRoot(t, root)
	s.ResetProbe()
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	args := []string{"rotate", "--kubeconfig", s.Kubeconfig(), "--root", rootDir, "--key-type", "ecdsa-p256", "--yes",
		"--sandbox", s.Dir(), "--strategy", "one-step", "--i-accept-downtime"}
	if code := app.Run(context.Background(), args, env); code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	snap := s.Probe()
	t.Logf("one-step: %d handshakes, %d failed\n%s", snap.Handshakes, snap.Failures, out.String())
	if snap.Failures == 0 {
		t.Errorf("one-step rotation recorded no failed handshake (of %d)", snap.Handshakes)
	}
	m := regexp.MustCompile(`(\d+) mTLS handshakes, (\d+) failed`).FindStringSubmatch(out.String())
	if m == nil || m[2] == "0" {
		t.Errorf("meshca's summary does not report the failed handshakes:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "WARNING: --strategy one-step") {
		t.Errorf("no warning printed for the one-step strategy:\n%s", errOut.String())
	}
	// Without --i-accept-downtime it is refused (usage error).
	env.Streams.Out, env.Streams.ErrOut = &bytes.Buffer{}, &bytes.Buffer{}
	if code := app.Run(context.Background(), args[:len(args)-1], env); code != cli.ExitUsage {
		t.Errorf("one-step without --i-accept-downtime: exit %d, want %d", code, cli.ExitUsage)
	}
}

// TestBringYourOwnIntermediate rotates to an intermediate issued by a
// company PKI (--ca-dir): meshca issues nothing and never sees the root key.
func TestBringYourOwnIntermediate(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	root := newRoot(t)
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "company", KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.FromCA(root, inter)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "company")
	if err := b.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	s.ResetProbe()
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	if code := app.Run(context.Background(), []string{"rotate", "--kubeconfig", s.Kubeconfig(), "--ca-dir", dir, "--yes"}, env); code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	tg.assertFinal(t, root)
	if got := mustParse(t, tg.cacerts(t)).Signer; !got.Equal(inter.Cert) {
		t.Error("cacerts does not sign with the given intermediate")
	}
	assertNoFailures(t, s, "rotation to a bring-your-own intermediate")
}
