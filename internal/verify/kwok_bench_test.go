package verify_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/sandbox/cluster"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

// BenchmarkFleetWalkKwok measures the fleet walk of `meshca verify` on the
// sandbox's real control plane (etcd, kube-apiserver, controller-manager,
// scheduler, kwok) without istiod: 1,000 kwok nodes, one ztunnel pod on
// each and 200 envoy pods (MESHCA_BENCH_NODES, MESHCA_BENCH_ENVOYS), every
// pod's port 15000 forwarded by kwok to a local server answering with a
// dump in the exact admin format. Every proxy matches the expectation given
// by flags. Each read is a real client-go port-forward through the API
// server and kwok, as on a real cluster, so this measures what
// BenchmarkFleetVerify measures minus istiod and the simulated CA flow; it
// also times the sequential walk (--parallel 1) in the same run.
func BenchmarkFleetWalkKwok(b *testing.B) {
	bin, err := cluster.FindBinDir()
	if err != nil {
		b.Skip(err)
	}
	cfg := cluster.Config{Dir: b.TempDir(), BinDir: bin, StartTimeout: 5 * time.Minute}
	if missing := cfg.Missing(); len(missing) > 0 {
		msg := fmt.Sprintf("sandbox binaries not built (missing %s); run make controlplane", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			b.Fatal(msg)
		}
		b.Skip(msg)
	}
	nodes, envoys := envInt("MESHCA_BENCH_NODES", 1000), envInt("MESHCA_BENCH_ENVOYS", 200)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	setup := time.Now()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		b.Fatalf("start control plane: %v", err)
	}
	b.Cleanup(func() { _ = c.Stop() })
	if err := c.AddNodes(ctx, nodes, "node"); err != nil {
		b.Fatal(err)
	}
	b.Logf("control plane with %d nodes in %s", nodes, time.Since(setup).Round(time.Second))

	// The CA, and admin servers answering as ztunnel and envoy do, with
	// leafs valid now.
	p := vt.NewRotation(b)
	leaf := func(id string) *x509.Certificate {
		return pkitest.Leaf(b, p.OldInt, id, time.Now().Add(-time.Hour), 24*time.Hour).Cert
	}
	roots := vt.Certs(p.OldRoot, p.NewRoot)
	id := func(sa string) vt.ZtunnelIdentity {
		name := "spiffe://cluster.local/ns/ambient/sa/" + sa
		return vt.ZtunnelIdentity{Name: name, Chain: []*x509.Certificate{leaf(name), p.OldInt.Cert, p.OldRoot.Cert}, Roots: roots}
	}
	ztDump := vt.ZtunnelDump(id("a"), id("b"))
	envoyDump := vt.EnvoyDump([]*x509.Certificate{leaf("spiffe://cluster.local/ns/ambient/sa/waypoint"), p.OldInt.Cert}, roots)
	serve := func(dump []byte) int {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(dump) }))
		b.Cleanup(s.Close)
		_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
		n, _ := strconv.Atoi(port)
		return n
	}
	ztPort, envoyPort := serve(ztDump), serve(envoyDump)

	cs := c.Client()
	for _, ns := range []string{mesh.DefaultNamespace, "ambient"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	type podSpec struct {
		ns, name, node string
		labels         map[string]string
		port           int
	}
	var pods []podSpec
	for i := range nodes {
		pods = append(pods, podSpec{mesh.DefaultNamespace, fmt.Sprintf("ztunnel-%04d", i), fmt.Sprintf("node-%d", i), map[string]string{mesh.LabelApp: mesh.ZtunnelApp}, ztPort})
	}
	for i := range envoys {
		pods = append(pods, podSpec{"ambient", fmt.Sprintf("waypoint-%04d", i), fmt.Sprintf("node-%d", i%nodes), map[string]string{mesh.LabelManaged: mesh.ManagedWaypoint}, envoyPort})
	}
	// Create pods and their PortForwards with a few writers at once.
	work := make(chan podSpec)
	errs := make(chan error, len(pods))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ps := range work {
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: ps.ns, Name: ps.name, Labels: ps.labels},
					Spec: corev1.PodSpec{
						NodeName:    ps.node,
						Containers:  []corev1.Container{{Name: mesh.ProxyContainer, Image: "istio/proxy", Env: []corev1.EnvVar{{Name: mesh.EnvXDSAgent, Value: "true"}}}},
						Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					},
				}
				if _, err := cs.CoreV1().Pods(ps.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					errs <- err
					continue
				}
				if err := c.ForwardPort(ctx, ps.ns, ps.name, kube.AdminPort, ps.port); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, ps := range pods {
		work <- ps
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("%d pods and port-forwards created in %s", len(pods), time.Since(setup).Round(time.Second))

	kubeconfig := c.Kubeconfig()
	meshca := buildMeshca(b)
	flags := []string{"--expect-roots", pki.Fingerprint(p.OldRoot.Cert) + "," + pki.Fingerprint(p.NewRoot.Cert), "--expect-signer", pki.Fingerprint(p.OldInt.Cert)}

	// Wait until kwok runs every pod and serves every forward.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		run := runMeshca(b, ctx, meshca, kubeconfig, flags...)
		if run.doc.OK && run.doc.Total.Match == len(pods) {
			b.Logf("fleet ready after %s: %+v", time.Since(setup).Round(time.Second), run.doc.Total)
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("fleet not ready: %+v; first: %+v", run.doc.Total, run.doc.Proxies[:min(3, len(run.doc.Proxies))])
		}
		b.Logf("waiting for the fleet: %+v", run.doc.Total)
		time.Sleep(3 * time.Second)
	}

	var total time.Duration
	var peak int64
	var last verifyRun
	b.ResetTimer()
	for b.Loop() {
		last = runMeshca(b, ctx, meshca, kubeconfig, flags...)
		total += last.wall
		peak = max(peak, last.maxRSS)
		if !last.doc.OK {
			b.Fatalf("verify failed: %+v: %v", last.doc.Total, last.doc.Proxies[0].Problems)
		}
	}
	b.StopTimer()
	perRun := total / time.Duration(b.N)
	seq := runMeshca(b, ctx, meshca, kubeconfig, append(flags, "--parallel", "1")...)
	if seq.doc.Total.Match != len(pods) {
		b.Errorf("sequential walk: %+v", seq.doc.Total)
	}
	ratio := seq.wall.Seconds() / perRun.Seconds()
	b.ReportMetric(perRun.Seconds(), "s/verify")
	b.ReportMetric(seq.wall.Seconds(), "s/sequential")
	b.ReportMetric(ratio, "speedup")
	b.ReportMetric(float64(peak)/1024, "MiB-peak-rss")
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		b.Log(line)
		fmt.Fprintln(os.Stderr, line)
	}
	report("meshca verify: %d proxies (%d ztunnel, %d envoy) in %.2fs (parallel %d; discovery %.2fs, read %.2fs); sequential walk (--parallel 1) %.2fs (%.1f ms/pod): %.1fx; meshca peak RSS %.0f MiB (sequential %.0f MiB)",
		last.doc.Total.Total, nodes, envoys, perRun.Seconds(), last.doc.Walk.Parallel, last.doc.Walk.DiscoverySeconds, last.doc.Walk.ReadSeconds,
		seq.wall.Seconds(), 1000*seq.doc.Walk.ReadSeconds/float64(len(pods)), ratio, float64(peak)/1024, float64(seq.maxRSS)/1024)

	// Where the CPU goes: meshca, the API server and kwok share this
	// machine's cores, and every read is a TLS connection to the API server
	// and one from it to kwok.
	for _, parallel := range []string{"1", "32"} {
		before := clusterCPU(c.Pids())
		r := runMeshca(b, ctx, meshca, kubeconfig, append(flags, "--parallel", parallel)...)
		after := clusterCPU(c.Pids())
		var parts []string
		used := r.cpu
		for _, name := range []string{cluster.APIServer, cluster.Kwok, cluster.Etcd} {
			d := after[name] - before[name]
			used += d
			parts = append(parts, fmt.Sprintf("%s %.1fs", name, d.Seconds()))
		}
		report("CPU of one walk with --parallel %s: wall %.2fs; meshca %.1fs, %s: %.1f of %d cores busy",
			parallel, r.wall.Seconds(), r.cpu.Seconds(), strings.Join(parts, ", "), used.Seconds()/r.wall.Seconds(), goruntime.NumCPU())
	}
	for _, parallel := range []string{"8", "16", "64", "128"} {
		r := runMeshca(b, ctx, meshca, kubeconfig, append(flags, "--parallel", parallel)...)
		report("--parallel %s: %.2fs, peak RSS %.0f MiB", parallel, r.wall.Seconds(), float64(r.maxRSS)/1024)
	}

	// The istioctl way: one command per pod (`istioctl zc certificates POD`,
	// `istioctl pc secret POD`), one after the other. meshca's per-pod
	// commands stand in for istioctl; a sample of pods is timed and the
	// whole fleet extrapolated.
	sample := min(envInt("MESHCA_BENCH_PERPOD_SAMPLE", 100), len(pods))
	start := time.Now()
	for i := range sample {
		ps := pods[i*len(pods)/sample]
		verb := "proxy"
		if strings.HasPrefix(ps.name, "ztunnel") {
			verb = "ztunnel"
		}
		cmd := exec.CommandContext(ctx, meshca, verb, "certs", ps.name, "-n", ps.ns, "--kubeconfig", kubeconfig, "-o", "json")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s certs %s/%s: %v\n%s", verb, ps.ns, ps.name, err, out)
		}
	}
	perPod := time.Since(start) / time.Duration(sample)
	istioctl := perPod * time.Duration(len(pods))
	b.ReportMetric(istioctl.Seconds(), "s/per-pod-commands")
	report("one command per pod, one after the other: %.0f ms/pod (sample of %d), %.0fs for the fleet: meshca verify is %.0fx faster",
		float64(perPod.Milliseconds()), sample, istioctl.Seconds(), istioctl.Seconds()/perRun.Seconds())
}

// clusterCPU returns the CPU time (user + system) each control-plane
// process has used so far, from /proc.
func clusterCPU(pids map[string]int) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name (which may hold spaces): state is
		// field 3; utime and stime are fields 14 and 15, in clock ticks
		// (100 per second on Linux).
		text := string(data)
		fields := strings.Fields(text[strings.LastIndex(text, ")")+1:])
		if len(fields) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(fields[11], 10, 64)
		st, _ := strconv.ParseInt(fields[12], 10, 64)
		out[name] = time.Duration(ut+st) * 10 * time.Millisecond
	}
	return out
}
