package rotate_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
	"github.com/meshca/meshca/internal/verify"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

// startSandbox starts a sandbox with a fast probe.
func startSandbox(t testing.TB, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Workloads == 0 {
		opts.Workloads = 2 * opts.Nodes
	}
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = 20 * time.Millisecond
	}
	opts.Logf = func(string, ...any) {}
	return sandboxtest.Start(t, opts)
}

var healthy = sandboxtest.Healthy

// target is a sandbox as the engine sees it, with a count of the API
// requests meshca makes.
type target struct {
	s        *sandbox.Sandbox
	cluster  *rotate.Cluster
	requests *atomic.Int64
	original *bundle.Bundle
}

func newTarget(t testing.TB, s *sandbox.Sandbox, name string) *target {
	t.Helper()
	tg := connect(t, s, name)
	tg.original = tg.cacerts(t)
	return tg
}

// connect is newTarget without reading cacerts (a self-signed sandbox has
// none).
func connect(t testing.TB, s *sandbox.Sandbox, name string) *target {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	n := kube.CountRequests(cfg)
	client, err := kube.NewClientFromConfig(cfg, sandbox.IstioNamespace, true)
	if err != nil {
		t.Fatal(err)
	}
	return &target{s: s, cluster: rotate.NewCluster(name, client, sandbox.IstioNamespace), requests: n}
}

func (tg *target) cacerts(t testing.TB) *bundle.Bundle {
	t.Helper()
	sec, err := tg.s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), rotate.CACertsSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.FromSecretData("cacerts", sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newRoot(t testing.TB) *pki.CA {
	t.Helper()
	root, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func options(root *pki.CA, until bundle.Phase, log *bytes.Buffer) rotate.Options {
	return rotate.Options{Root: root, Until: until, KeyType: pki.ECDSAP256, Observer: logTo(log),
		ReloadTimeout: 30 * time.Second, RolloutTimeout: time.Minute, VerifyTimeout: time.Minute}
}

// logTo writes each event's detail as a progress line.
func logTo(log *bytes.Buffer) rotate.Observer {
	return rotate.ObserverFunc(func(ev rotate.Event) {
		fmt.Fprintf(log, "[%6.1fs] %s %s: %s\n", ev.Elapsed, ev.Kind, ev.Cluster, ev.Detail)
	})
}

// assertFinal checks a completed rotation: new signer and new root only in
// cacerts, and the fleet proven.
func (tg *target) assertFinal(t *testing.T, root *pki.CA) {
	t.Helper()
	ctx := context.Background()
	final := tg.cacerts(t)
	p, err := final.Parse()
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Roots) != 1 || !p.Roots[0].Equal(root.Cert) {
		t.Errorf("final root-cert.pem holds %d roots, want the new root only", len(p.Roots))
	}
	if err := p.Signer.CheckSignatureFrom(root.Cert); err != nil {
		t.Errorf("final signer is not the new intermediate under the new root: %v", err)
	}
	exp, err := verify.NewExpectation("final", []string{pki.Fingerprint(root.Cert)}, pki.Fingerprint(p.Signer))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := tg.cluster.Verifier.Verify(ctx, exp)
	if err != nil || !rep.OK() {
		t.Errorf("fleet does not hold the new CA everywhere (%v)", err)
	}
}

func readRecord(t testing.TB, tg *target) *rotate.Record {
	t.Helper()
	sts, err := rotate.New([]*rotate.Cluster{tg.cluster}, rotate.Options{}).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sts[0].Record == nil {
		t.Fatal("no rotation record")
	}
	return sts[0].Record
}

func assertNoFailures(t *testing.T, s *sandbox.Sandbox, what string) {
	t.Helper()
	snap := s.Probe()
	t.Logf("%s: %d mTLS handshakes, %d failed", what, snap.Handshakes, snap.Failures)
	for pair, f := range snap.FailuresByPair {
		t.Logf("  %s: %d (%s)", pair, f.Count, f.LastReason)
	}
	if snap.Handshakes == 0 {
		t.Errorf("%s: the probe made no handshake", what)
	}
	if snap.Failures != 0 {
		t.Errorf("%s: %d failed handshakes, want 0", what, snap.Failures)
	}
}

func TestPhasedRotationUnderProbeTraffic(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{}))
	tg := newTarget(t, s, "sandbox")
	root := newRoot(t)
	var log bytes.Buffer
	s.ResetProbe()
	t0 := time.Now()
	eng := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log))
	if err := eng.Run(context.Background()); err != nil {
		t.Fatalf("rotate: %v\n%s", err, log.String())
	}
	t.Logf("rotation in %s, %d API requests\n%s", time.Since(t0).Round(time.Millisecond), tg.requests.Load(), log.String())
	assertNoFailures(t, s, "phased rotation")
	tg.assertFinal(t, root)
	if rec := readRecord(t, tg); !tg.backup(t, rec.BackupSecret).Equal(tg.original) {
		t.Errorf("backup secret %s does not equal the original cacerts byte for byte", rec.BackupSecret)
	}
	// Re-running a finished rotation changes nothing.
	before := tg.cacerts(t)
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(context.Background()); err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if !tg.cacerts(t).Equal(before) {
		t.Error("re-running a complete rotation changed cacerts")
	}
}

func TestConcurrentEditStopsTheRotation(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	root := newRoot(t)
	var log bytes.Buffer
	ctx := context.Background()
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseIssue, &log)).Run(ctx); err != nil {
		t.Fatalf("rotate until issue: %v\n%s", err, log.String())
	}
	// Someone edits cacerts while meshca checks the fleet before retiring.
	var edited []byte
	tg.cluster.Verifier = editingVerifier{Verifier: tg.cluster.Verifier, edit: func() {
		secrets := s.Client().CoreV1().Secrets(sandbox.IstioNamespace)
		sec, err := secrets.Get(ctx, rotate.CACertsSecret, metav1.GetOptions{})
		if err != nil {
			t.Error(err)
			return
		}
		sec.Data["root-cert.pem"] = append(sec.Data["root-cert.pem"], '\n')
		edited = sec.Data["root-cert.pem"]
		if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	}}
	err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "changed by someone else") || !strings.Contains(err.Error(), "nothing was overwritten") {
		t.Fatalf("error = %v, want the concurrent edit named", err)
	}
	if got := tg.cacerts(t).RootCert; !bytes.Equal(got, edited) {
		t.Error("the concurrent edit was overwritten")
	}
}

// editingVerifier edits cacerts on its first call, as a concurrent writer.
type editingVerifier struct {
	rotate.Verifier
	edit func()
}

func (v editingVerifier) Verify(ctx context.Context, exp verify.Expectation) (*verify.Report, error) {
	rep, err := v.Verifier.Verify(ctx, exp)
	if v.edit != nil {
		v.edit()
	}
	return rep, err
}

func TestRollbackFromEachPhase(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	for _, until := range []bundle.Phase{bundle.PhaseTrust, bundle.PhaseIssue} {
		t.Run("from "+string(until), func(t *testing.T) {
			var log bytes.Buffer
			root := newRoot(t)
			s.ResetProbe()
			if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, until, &log)).Run(ctx); err != nil {
				t.Fatalf("rotate until %s: %v\n%s", until, err, log.String())
			}
			if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(nil, "", &log)).Rollback(ctx); err != nil {
				t.Fatalf("rollback: %v\n%s", err, log.String())
			}
			if !tg.cacerts(t).Equal(tg.original) {
				t.Error("cacerts after rollback differs from the original")
			}
			exp, _ := verify.NewExpectation("original", []string{pki.Fingerprint(mustParse(t, tg.original).Roots[0])}, pki.Fingerprint(mustParse(t, tg.original).Signer))
			if rep, err := tg.cluster.Verifier.Verify(ctx, exp); err != nil || !rep.OK() {
				t.Errorf("the fleet is not back on the original CA (%v)", err)
			}
			assertNoFailures(t, s, "rotate to "+string(until)+" and roll back")
		})
	}
	t.Run("from retire it refuses", func(t *testing.T) {
		var log bytes.Buffer
		root := newRoot(t)
		if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx); err != nil {
			t.Fatalf("rotate: %v\n%s", err, log.String())
		}
		before := tg.cacerts(t)
		err := rotate.New([]*rotate.Cluster{tg.cluster}, options(nil, "", &log)).Rollback(ctx)
		if err == nil || !strings.Contains(err.Error(), "trust only the new root") {
			t.Fatalf("rollback from retire: error = %v, want a refusal naming the stranded proxies", err)
		}
		if !tg.cacerts(t).Equal(before) {
			t.Error("a refused rollback changed cacerts")
		}
	})
}

func mustParse(t *testing.T, b *bundle.Bundle) *bundle.Parsed {
	t.Helper()
	p, err := b.Parse()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTwoClustersShareTheRootAndKeepThePhaseOrder: phase 1 must be proven in
// every cluster before phase 2 is written in any.
func TestTwoClustersShareTheRootAndKeepThePhaseOrder(t *testing.T) {
	east := newTarget(t, startSandbox(t, healthy(sandbox.Options{Nodes: 2})), "east")
	west := newTarget(t, startSandbox(t, healthy(sandbox.Options{Nodes: 2})), "west")
	root := newRoot(t)
	var log bytes.Buffer
	east.s.ResetProbe()
	west.s.ResetProbe()
	if err := rotate.New([]*rotate.Cluster{east.cluster, west.cluster}, options(root, bundle.PhaseRetire, &log)).Run(context.Background()); err != nil {
		t.Fatalf("rotate: %v\n%s", err, log.String())
	}
	t.Log(log.String())
	east.assertFinal(t, root)
	west.assertFinal(t, root)
	assertNoFailures(t, east.s, "east")
	assertNoFailures(t, west.s, "west")
	if mustParse(t, east.cacerts(t)).Signer.Equal(mustParse(t, west.cacerts(t)).Signer) {
		t.Error("both clusters got the same intermediate; each needs its own")
	}
	times := func(r *rotate.Record, p rotate.Phase) (written, proven time.Time) {
		for _, tr := range r.Transitions {
			if tr.Phase == p && tr.Written != nil && tr.Proven != nil {
				return *tr.Written, *tr.Proven
			}
		}
		t.Fatalf("phase %s has no transition times", p)
		return
	}
	re, rw := readRecord(t, east), readRecord(t, west)
	for _, pair := range [][2]rotate.Phase{{rotate.PhaseTrust, rotate.PhaseIssue}, {rotate.PhaseIssue, rotate.PhaseRetire}} {
		_, eProven := times(re, pair[0])
		_, wProven := times(rw, pair[0])
		eWritten, _ := times(re, pair[1])
		wWritten, _ := times(rw, pair[1])
		lastProven := max(eProven.UnixNano(), wProven.UnixNano())
		if firstWritten := min(eWritten.UnixNano(), wWritten.UnixNano()); firstWritten < lastProven {
			t.Errorf("phase %s was written in one cluster before phase %s was proven in both", pair[1], pair[0])
		}
	}
}

func (tg *target) backup(t testing.TB, name string) *bundle.Bundle {
	t.Helper()
	sec, err := tg.s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.FromSecretData(name, sec.Data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPreflightRefusals: a mesh that is not ready is refused before the
// first write, with the fix named, and nothing is written.
func TestPreflightRefusals(t *testing.T) {
	tests := map[string]struct {
		opts    sandbox.Options
		breakIt func(t *testing.T, s *sandbox.Sandbox)
		wantErr []string
	}{
		"ISTIO_MULTIROOT_MESH off": {
			opts:    sandbox.Options{Nodes: 1, Workloads: 1, XDSAgent: true},
			wantErr: []string{"ISTIO_MULTIROOT_MESH", "--set"},
		},
		"ztunnel too old for several roots": {
			opts: healthy(sandbox.Options{Nodes: 1, Workloads: 1}),
			breakIt: func(t *testing.T, s *sandbox.Sandbox) {
				patch := []byte(`{"spec":{"template":{"spec":{"containers":[{"name":"istio-proxy","image":"docker.io/istio/ztunnel:1.25.1"}]}}}}`)
				if _, err := s.Client().AppsV1().DaemonSets(sandbox.IstioNamespace).Patch(context.Background(), sandbox.ZtunnelName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: []string{"ztunnel", "1.25.1", "1.26"},
		},
		"incomplete cacerts": {
			opts: healthy(sandbox.Options{Nodes: 1, Workloads: 1}),
			breakIt: func(t *testing.T, s *sandbox.Sandbox) {
				secrets := s.Client().CoreV1().Secrets(sandbox.IstioNamespace)
				sec, err := secrets.Get(context.Background(), rotate.CACertsSecret, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				delete(sec.Data, "ca-key.pem")
				if _, err := secrets.Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: []string{"ca-key.pem"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := startSandbox(t, tc.opts)
			if tc.breakIt != nil {
				tc.breakIt(t, s)
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig())
			if err != nil {
				t.Fatal(err)
			}
			client, err := kube.NewClientFromConfig(cfg, sandbox.IstioNamespace, true)
			if err != nil {
				t.Fatal(err)
			}
			c := rotate.NewCluster("sandbox", client, sandbox.IstioNamespace)
			before, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), rotate.CACertsSecret, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			// The plan runs the preflight too and names what would block.
			plans, err := rotate.New([]*rotate.Cluster{c}, options(newRoot(t), bundle.PhaseRetire, &log)).Plan(context.Background())
			if err != nil {
				t.Fatalf("plan on a mesh that is not ready: %v", err)
			}
			if !rotate.Blocked(plans) {
				t.Errorf("the plan shows no blocker on a mesh the run refuses: %+v", plans[0])
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(strings.Join(plans[0].Blockers, "\n"), want) {
					t.Errorf("plan blockers %q do not mention %q", plans[0].Blockers, want)
				}
			}
			err = rotate.New([]*rotate.Cluster{c}, options(newRoot(t), bundle.PhaseRetire, &log)).Run(context.Background())
			if err == nil {
				t.Fatal("rotation was not refused")
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			after, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), rotate.CACertsSecret, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if after.ResourceVersion != before.ResourceVersion {
				t.Error("cacerts was written although the rotation was refused")
			}
			for _, name := range []string{rotate.RecordName} {
				if _, err := s.Client().CoreV1().ConfigMaps(sandbox.IstioNamespace).Get(context.Background(), name, metav1.GetOptions{}); err == nil {
					t.Errorf("configmap %s was created although the rotation was refused", name)
				}
			}
			secrets, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).List(context.Background(), metav1.ListOptions{LabelSelector: rotate.LabelManagedBy + "=meshca"})
			if err != nil {
				t.Fatal(err)
			}
			if len(secrets.Items) > 0 {
				t.Errorf("meshca created %d secret(s) although the rotation was refused", len(secrets.Items))
			}
		})
	}
}

// eventLog records a run's events and writes them as progress lines.
type eventLog struct {
	log    bytes.Buffer
	events []rotate.Event
}

func (l *eventLog) Observe(ev rotate.Event) {
	l.events = append(l.events, ev)
	logTo(&l.log).Observe(ev)
}

// of returns the events of kind k.
func (l *eventLog) of(k rotate.EventKind) []rotate.Event {
	var out []rotate.Event
	for _, ev := range l.events {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// TestRepeatedRotations: a plan names the intermediate the run then writes;
// after a completed rotation, a plan still works and says there is nothing
// to do; an intermediate renewal under the same root starts a new rotation
// in which only the issue phase runs, and the new signer is written and
// proven.
func TestRepeatedRotations(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	root := newRoot(t)
	rootDir := filepath.Join(t.TempDir(), "root")
	if err := bundle.WriteRoot(rootDir, root, false); err != nil {
		t.Fatal(err)
	}
	s.ResetProbe()

	// 1. The planned intermediate is the one written.
	opts := options(root, bundle.PhaseRetire, &bytes.Buffer{})
	opts.RootDir = rootDir
	plans, err := rotate.New([]*rotate.Cluster{tg.cluster}, opts).Plan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rotate.Blocked(plans) || !plans[0].Start || plans[0].NewSigner == "" {
		t.Fatalf("plan on a ready mesh: %+v", plans[0])
	}
	var first eventLog
	opts.Observer = &first
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, opts).Run(ctx); err != nil {
		t.Fatalf("rotate: %v\n%s", err, first.log.String())
	}
	tg.assertFinal(t, root)
	if got := pki.Fingerprint(mustParse(t, tg.cacerts(t)).Signer); got != plans[0].NewSigner {
		t.Errorf("the run wrote intermediate %.12s, the plan showed %.12s", got, plans[0].NewSigner)
	}

	// 2. After completion a plan works and says nothing is to do; so does
	// the run, which changes nothing.
	opts.Observer = logTo(&bytes.Buffer{})
	plans, err = rotate.New([]*rotate.Cluster{tg.cluster}, opts).Plan(ctx)
	if err != nil {
		t.Fatalf("plan after a completed rotation: %v", err)
	}
	if rotate.Blocked(plans) || plans[0].Start || !strings.Contains(plans[0].Why, "nothing to do") {
		t.Errorf("plan after completion = %+v, want nothing to do and no blocker", plans[0])
	}

	// 3. Intermediate renewal under the same root (--ca-dir).
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "renewed", KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := bundle.FromCA(root, inter)
	if err != nil {
		t.Fatal(err)
	}
	tg.cluster.CA = renewed
	defer func() { tg.cluster.CA = nil }()
	ropts := options(nil, bundle.PhaseRetire, &bytes.Buffer{})
	plans, err = rotate.New([]*rotate.Cluster{tg.cluster}, ropts).Plan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rotate.Blocked(plans) || !plans[0].Start || !plans[0].IntermediateOnly || plans[0].NewSigner != pki.Fingerprint(inter.Cert) {
		t.Errorf("plan of the renewal = %+v, want an intermediate-only rotation to %.12s", plans[0], pki.Fingerprint(inter.Cert))
	}
	var renewal eventLog
	ropts.Observer = &renewal
	eng := rotate.New([]*rotate.Cluster{tg.cluster}, ropts)
	if err := eng.Run(ctx); err != nil {
		t.Fatalf("renewal: %v\n%s", err, renewal.log.String())
	}
	t.Logf("renewal:\n%s", renewal.log.String())
	final := mustParse(t, tg.cacerts(t))
	if !final.Signer.Equal(inter.Cert) {
		t.Fatal("the renewal did not write the new intermediate")
	}
	exp, err := verify.NewExpectation("renewed", []string{pki.Fingerprint(root.Cert)}, pki.Fingerprint(inter.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := tg.cluster.Verifier.Verify(ctx, exp); err != nil || !rep.OK() {
		t.Errorf("the fleet does not hold leaves from the renewed intermediate (%v)", err)
	}
	var skipped []rotate.Phase
	for _, ev := range renewal.of(rotate.EventNothingToDo) {
		skipped = append(skipped, ev.Phase)
	}
	if !slices.Equal(skipped, []rotate.Phase{rotate.PhaseTrust, rotate.PhaseRetire}) {
		t.Errorf("phases with nothing to do = %v, want trust and retire", skipped)
	}
	proven := renewal.of(rotate.EventPhaseProven)
	if len(proven) != 1 || proven[0].Phase != rotate.PhaseIssue {
		t.Errorf("proven phases = %+v, want issue alone", proven)
	}
	if rec := readRecord(t, tg); rec.NewSigner != pki.Fingerprint(inter.Cert) || !rec.IntermediateOnly() {
		t.Errorf("record after the renewal: %+v", rec)
	}
	for _, r := range eng.Summary().Restarts {
		t.Logf("renewal restarts: %s %s %s x%d", r.Phase, r.Workload, r.Reason, r.Count)
	}
	assertNoFailures(t, s, "a rotation, then an intermediate renewal")
}
