package verify_test

// Integration test and benchmark of fleet verification on the sandbox
// (design.md §5): a real API server, kwok, a real istiod and simulated
// ztunnel and envoy proxies serving the exact admin formats through kwok's
// port-forward. They drive the real `meshca verify` command.
//
// A sandbox comes from sandboxtest.Start, or from MESHCA_SANDBOX_KUBECONFIG, the kubeconfig of a sandbox already
// running (`meshca sandbox up`; the test rewrites its cacerts). Without the
// control-plane binaries the tests skip with a message, unless CI=true.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
	"github.com/meshca/meshca/internal/verify"
)

// sandboxSpec is the sandbox a test needs.
type sandboxSpec struct {
	// Nodes is the number of kwok nodes, hence of ztunnel pods.
	Nodes int
	// Workloads is the number of ambient workload pods spread over the
	// nodes (so that ztunnels hold certificates).
	Workloads int
	// Envoys is the number of envoy proxies wanted (a waypoint per app
	// namespace and the ingress gateway); 0 means the sandbox's default.
	Envoys int
}

// needSandbox returns the kubeconfig of MESHCA_SANDBOX_KUBECONFIG, or of a
// new sandbox with ISTIO_MULTIROOT_MESH and PROXY_CONFIG_XDS_AGENT on,
// ztunnel 1.28 behaviour and day-long certificates: nothing refreshes during
// a test, so a ztunnel converges only when restarted.
func needSandbox(tb testing.TB, spec sandboxSpec) string {
	tb.Helper()
	if kc := os.Getenv("MESHCA_SANDBOX_KUBECONFIG"); kc != "" {
		return kc
	}
	opts := sandboxtest.Healthy(sandbox.Options{
		Nodes: spec.Nodes, Workloads: spec.Workloads, ZtunnelVersion: "1.28", CertTTL: 24 * time.Hour,
	})
	if spec.Envoys > 1 {
		// One waypoint per app namespace, plus the ingress gateway.
		opts.AppNamespaces, opts.ServiceAccounts = spec.Envoys-1, 1
	}
	return sandboxtest.Start(tb, opts).Kubeconfig()
}

// meshcaVerify runs `meshca verify -o json --all` in-process, as a user
// would, and decodes its document.
func meshcaVerify(t *testing.T, ctx context.Context, kubeconfig string, args ...string) (verify.Document, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}}
	code := app.Run(ctx, append([]string{"verify", "--kubeconfig", kubeconfig, "-o", "json", "--all"}, args...), env)
	var doc verify.Document
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("meshca verify: exit %d, no document (%v); stderr:\n%s", code, err, errOut.String())
	}
	return doc, code
}

// meshcaVerifyTable runs `meshca verify` and returns its table.
func meshcaVerifyTable(ctx context.Context, kubeconfig string) string {
	var out bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &out}}
	code := app.Run(ctx, []string{"verify", "--kubeconfig", kubeconfig}, env)
	return fmt.Sprintf("%s(exit %d)", out.String(), code)
}

// names returns the namespace/name of the proxies of doc with a status in
// statuses, sorted.
func names(doc verify.Document, statuses ...verify.Status) []string {
	var out []string
	for _, p := range doc.Proxies {
		if slices.Contains(statuses, p.Status) {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	slices.Sort(out)
	return out
}

// waitFor runs meshca verify every interval until done accepts the
// document, and returns it; it fails after timeout.
func waitFor(t *testing.T, ctx context.Context, kubeconfig, what string, timeout time.Duration, done func(verify.Document, int) bool) verify.Document {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		doc, code := meshcaVerify(t, ctx, kubeconfig)
		if done(doc, code) {
			return doc
		}
		if time.Now().After(deadline) {
			data, _ := json.MarshalIndent(doc, "", "  ")
			t.Fatalf("%s: not reached within %s; last verification:\n%s", what, timeout, data)
		}
		time.Sleep(time.Second)
	}
}

func clientset(t testing.TB, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestSandboxConvergence: after cacerts changes, meshca verify names the
// proxies that lag, as stale, until they converge.
func TestSandboxConvergence(t *testing.T) {
	kubeconfig := needSandbox(t, sandboxSpec{Nodes: 3, Workloads: 9})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := clientset(t, kubeconfig)

	// 1. A fresh mesh: once every proxy has its certificate, all match.
	start := waitFor(t, ctx, kubeconfig, "every proxy matches the initial CA", 2*time.Minute, func(d verify.Document, code int) bool {
		return code == cli.ExitOK && d.OK && d.Total.Match > 0
	})
	var ztunnels []string
	for _, p := range start.Proxies {
		if p.Kind == mesh.KindZtunnel && p.Status == verify.StatusMatch {
			ztunnels = append(ztunnels, p.Namespace+"/"+p.Name)
		}
	}
	if len(ztunnels) == 0 {
		t.Fatal("no ztunnel holds a certificate: the sandbox has no ambient workload")
	}
	slices.Sort(ztunnels)

	// 2. Phase 1 of a rotation: the same signer, root-cert.pem = exact old
	// bytes + a new root.
	secret, err := cs.CoreV1().Secrets(mesh.DefaultNamespace).Get(ctx, mesh.CACertsSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := bundle.FromSecretData("secret istio-system/cacerts", secret.Data)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256, CommonName: "Root CA next"})
	if err != nil {
		t.Fatal(err)
	}
	newInt, err := pki.NewIntermediate(newRoot, pki.IntermediateOptions{Cluster: "sandbox", KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	next, err := bundle.FromCA(newRoot, newInt)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := bundle.Build(bundle.PhaseTrust, cur, next, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	secret.Data = trust.SecretData()
	if _, err := cs.CoreV1().Secrets(mesh.DefaultNamespace).Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	newFP := pki.Fingerprint(newRoot.Cert)

	// 3. istiod reloads and rewrites the ConfigMaps; envoys with PCDS follow
	// by themselves; ztunnel 1.28 does not (no PCDS, no refresh within a
	// long TTL), so every ztunnel with certificates is named stale,
	// missing the new root.
	lagging := waitFor(t, ctx, kubeconfig, "istiod serves the new roots", time.Minute, func(d verify.Document, _ int) bool {
		return d.RootConfigMaps != nil && len(d.RootConfigMaps.Stale) == 0 && slices.Contains(d.Expectation.Roots, newFP) &&
			d.Total.Unreadable == 0 && d.Total.NotReady == 0
	})
	if lagging.OK {
		t.Fatal("verify passes right after cacerts changed: ztunnel cannot have the new root yet")
	}
	t.Logf("after cacerts changed, meshca verify says:\n%s", meshcaVerifyTable(ctx, kubeconfig))
	if got := names(lagging, verify.StatusStale); !sameOrSuperset(got, ztunnels) {
		t.Errorf("stale proxies = %v, want every ztunnel with certificates named: %v", got, ztunnels)
	}
	for _, p := range lagging.Proxies {
		if p.Kind == mesh.KindZtunnel && p.Status == verify.StatusStale && !slices.Contains(p.Problems, "missing root "+newFP[:12]) {
			t.Errorf("ztunnel %s/%s: problems %q, want the missing new root named", p.Namespace, p.Name, p.Problems)
		}
	}

	// 4. Restart ztunnel (as kubectl rollout restart does): the new pods
	// request certificates and get both roots; verify converges.
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	if _, err := cs.AppsV1().DaemonSets(mesh.DefaultNamespace).Patch(ctx, mesh.ZtunnelApp, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	done := waitFor(t, ctx, kubeconfig, "every proxy converges after the ztunnel restart", 2*time.Minute, func(d verify.Document, code int) bool {
		for _, n := range names(d, verify.StatusStale, verify.StatusNotReady, verify.StatusUnreadable) {
			seen[n] = true
		}
		return code == cli.ExitOK && d.OK
	})
	for _, p := range done.Proxies {
		if p.Status != verify.StatusMatch && p.Status != verify.StatusNothingToVerify {
			t.Errorf("%s %s/%s is %s after convergence", p.Kind, p.Namespace, p.Name, p.Status)
		}
		if p.Kind == mesh.KindZtunnel && slices.Contains(ztunnels, p.Namespace+"/"+p.Name) {
			t.Errorf("ztunnel %s/%s survived the restart", p.Namespace, p.Name)
		}
	}
	t.Logf("proxies named as lagging while converging: %v", slices.Sorted(maps.Keys(seen)))
	t.Logf("after the ztunnel restart, meshca verify says:\n%s", meshcaVerifyTable(ctx, kubeconfig))
}

func sameOrSuperset(got, want []string) bool {
	for _, w := range want {
		if !slices.Contains(got, w) {
			return false
		}
	}
	return true
}

// BenchmarkFleetVerify measures `meshca verify` on a big sandbox (1,000
// ztunnel pods and 200 envoy proxies by default; MESHCA_BENCH_NODES,
// MESHCA_BENCH_WORKLOADS and MESHCA_BENCH_ENVOYS change that) against a
// sequential walk, one pod at a time as istioctl reads them, in the same
// run. meshca runs as its own process so that its peak RSS is its own, not
// the sandbox's (whose simulated proxies live in the test process). It
// reports seconds per verification, the sequential time, the speedup and
// meshca's peak RSS.
func BenchmarkFleetVerify(b *testing.B) {
	spec := sandboxSpec{
		Nodes:     envInt("MESHCA_BENCH_NODES", 1000),
		Workloads: envInt("MESHCA_BENCH_WORKLOADS", 1000),
		Envoys:    envInt("MESHCA_BENCH_ENVOYS", 200),
	}
	kubeconfig := needSandbox(b, spec)
	bin := buildMeshca(b)
	ctx := context.Background()

	// Wait until the fleet is up and matching, so both walks read the same.
	deadline := time.Now().Add(10 * time.Minute)
	for {
		run := runMeshca(b, ctx, bin, kubeconfig)
		if run.doc.OK && run.doc.Total.Total >= spec.Nodes {
			b.Logf("fleet ready: %d proxies (%+v)", run.doc.Total.Total, run.doc.Total)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("fleet not ready after 10m: %+v", run.doc.Total)
		}
		time.Sleep(5 * time.Second)
	}

	var total time.Duration
	var peak int64
	var last verifyRun
	b.ResetTimer()
	for b.Loop() {
		last = runMeshca(b, ctx, bin, kubeconfig)
		total += last.wall
		peak = max(peak, last.maxRSS)
	}
	b.StopTimer()
	perRun := total / time.Duration(b.N)
	seq := runMeshca(b, ctx, bin, kubeconfig, "--parallel", "1")
	if seq.doc.Total.Total != last.doc.Total.Total {
		b.Errorf("sequential walk read %d proxies, parallel %d", seq.doc.Total.Total, last.doc.Total.Total)
	}
	ratio := seq.wall.Seconds() / perRun.Seconds()
	b.ReportMetric(perRun.Seconds(), "s/verify")
	b.ReportMetric(seq.wall.Seconds(), "s/sequential")
	b.ReportMetric(ratio, "speedup")
	b.ReportMetric(float64(peak)/1024, "MiB-peak-rss")
	fmt.Fprintf(os.Stderr, "meshca verify: %d proxies (%d ztunnel) in %.2fs (parallel %d; read %.2fs, discovery %.2fs); sequential walk %.2fs; %.1fx faster; meshca peak RSS %.0f MiB\n",
		last.doc.Total.Total, last.doc.Kinds[0].Total, perRun.Seconds(), last.doc.Walk.Parallel, last.doc.Walk.ReadSeconds, last.doc.Walk.DiscoverySeconds,
		seq.wall.Seconds(), ratio, float64(peak)/1024)
}

type verifyRun struct {
	doc    verify.Document
	wall   time.Duration
	maxRSS int64         // KiB
	cpu    time.Duration // user + system
}

// runMeshca runs the meshca binary's verify -o json and measures it.
func runMeshca(b *testing.B, ctx context.Context, bin, kubeconfig string, args ...string) verifyRun {
	b.Helper()
	cmd := exec.CommandContext(ctx, bin, append([]string{"verify", "--kubeconfig", kubeconfig, "-o", "json", "--all"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != cli.ExitFailure) {
		b.Fatalf("meshca verify: %v\n%s", err, errOut.String())
	}
	r := verifyRun{wall: wall}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if err := json.Unmarshal(out.Bytes(), &r.doc); err != nil {
		b.Fatalf("meshca verify: no document: %v\n%s", err, errOut.String())
	}
	return r
}

func buildMeshca(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "meshca")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/meshca/meshca/cmd/meshca")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build meshca: %v\n%s", err, out)
	}
	return bin
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
