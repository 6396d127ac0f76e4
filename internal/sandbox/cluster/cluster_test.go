//go:build unix

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"

	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// testConfig returns a cluster configuration in a fresh temporary directory,
// skipping the test when the binaries are not built (failing under CI=true).
func testConfig(t *testing.T) cluster.Config {
	t.Helper()
	bin, err := cluster.FindBinDir()
	if err != nil {
		t.Fatalf("find bin dir: %v", err)
	}
	cfg := cluster.Config{Dir: t.TempDir(), BinDir: bin, CRDs: []string{cluster.IstioCRDs}, Logf: t.Logf}
	if missing := cfg.Missing(); len(missing) > 0 {
		msg := fmt.Sprintf("control-plane binaries not built (missing %s); run hack/controlplane.sh", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return cfg
}

func TestClusterSchedulesRollsOutAndPortForwards(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	began := time.Now()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop()
		}
	})
	t.Cleanup(func() { logTailsOnFailure(t, c) })
	t.Logf("control plane (with istio CRDs) started in %v", time.Since(began).Round(time.Millisecond))
	pids := c.Pids()
	if len(pids) != 5 {
		t.Fatalf("Pids() = %v, want 5 components", pids)
	}
	if st, err := os.Stat(c.Kubeconfig()); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("admin kubeconfig %s: mode %v, err %v; want 0600", c.Kubeconfig(), st.Mode().Perm(), err)
	}
	client := c.Client()

	began = time.Now()
	if err := c.AddNodes(ctx, 2, "kwok-node"); err != nil {
		t.Fatalf("add nodes: %v", err)
	}
	t.Logf("2 nodes ready and untainted in %v", time.Since(began).Round(time.Millisecond))

	const ns = "sandbox-test"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	began = time.Now()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, deployment("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}
	if _, err := client.AppsV1().DaemonSets(ns).Create(ctx, daemonSet("agent"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create daemonset: %v", err)
	}
	webPods := waitRolledOut(ctx, t, client, ns, "web", "agent", 2)
	t.Logf("deployment (2 replicas) and daemonset (2 nodes) Running/Ready in %v", time.Since(began).Round(time.Millisecond))
	logRSS(t, pids)

	// kubectl rollout restart: a new restartedAt annotation on the pod template.
	began = time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	if _, err := client.AppsV1().Deployments(ns).Patch(ctx, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("restart deployment: %v", err)
	}
	if _, err := client.AppsV1().DaemonSets(ns).Patch(ctx, "agent", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("restart daemonset: %v", err)
	}
	newWebPods := waitRolledOut(ctx, t, client, ns, "web", "agent", 2)
	t.Logf("rollout restart of deployment + daemonset complete in %v", time.Since(began).Round(time.Millisecond))
	for _, p := range newWebPods {
		if slices.Contains(webPods, p) {
			t.Errorf("pod %s survived the rollout restart", p)
		}
	}

	// Port-forward to pod port 15000 reaches a local HTTP server via
	// apiserver -> kwok's fake kubelet -> PortForward target.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello from the sandbox")
	}))
	defer srv.Close()
	target, err := strconv.Atoi(srv.URL[strings.LastIndexByte(srv.URL, ':')+1:])
	if err != nil {
		t.Fatalf("parse server port from %s: %v", srv.URL, err)
	}
	pod := newWebPods[0]
	if err := c.ForwardPort(ctx, ns, pod, 15000, target); err != nil {
		t.Fatalf("forward port: %v", err)
	}
	began = time.Now()
	var localPort int
	var stop func()
	var body string
	// The forward must outlive the poll, whose context ends when it returns.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		localPort, stop, err = forward(ctx, c.RESTConfig(), client, ns, pod, 15000)
		if err != nil {
			t.Logf("port-forward: %v (retrying)", err)
			return false, nil
		}
		body, err = get(ctx, localPort)
		if err != nil {
			t.Logf("GET through port-forward: %v (retrying)", err)
			stop()
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("reach local server through port-forward to %s/%s:15000: %v", ns, pod, err)
	}
	defer stop()
	t.Logf("first response through port-forward after %v", time.Since(began).Round(time.Millisecond))
	if body != "hello from the sandbox" {
		t.Errorf("body through port-forward = %q, want %q", body, "hello from the sandbox")
	}
	var lat []time.Duration
	for range 10 {
		t0 := time.Now()
		if _, err := get(ctx, localPort); err != nil {
			t.Fatalf("GET through port-forward: %v", err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("port-forward GET latency (new connection each): min %v median %v max %v",
		lat[0].Round(10*time.Microsecond), lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	stop()

	began = time.Now()
	stopped = true
	if err := c.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	t.Logf("stopped in %v", time.Since(began).Round(time.Millisecond))
	assertGone(t, pids)
	if _, err := os.Stat(cfg.Dir + "/" + cluster.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file still present after Stop (err %v)", err)
	}
}

func TestStopDirStopsADetachedClusterAndARestartKeepsItsState(t *testing.T) {
	cfg := testConfig(t)
	cfg.CRDs = nil
	cfg.Detach = true
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	pids := c.Pids()
	t.Cleanup(func() { _ = c.Stop() })
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "survivor"}, Data: map[string]string{"k": "v"}}
	if _, err := c.Client().CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}

	if _, err := cluster.Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Errorf("second Start in the same dir: err = %v, want 'already runs'", err)
	}
	if err := cluster.StopDir(cfg.Dir, 10*time.Second); err != nil {
		t.Fatalf("StopDir: %v", err)
	}
	assertGone(t, pids)
	if err := cluster.StopDir(cfg.Dir, time.Second); err != nil {
		t.Errorf("StopDir of a stopped cluster: %v", err)
	}

	// Up again on the same directory: same PKI, same etcd data, new ports.
	cfg.Detach = false
	began := time.Now()
	again, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { _ = again.Stop() })
	t.Logf("restarted on existing state in %v", time.Since(began).Round(time.Millisecond))
	got, err := again.Client().CoreV1().ConfigMaps("default").Get(ctx, "survivor", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("configmap after restart: %v", err)
	}
	if got.Data["k"] != "v" {
		t.Errorf("configmap data after restart = %v", got.Data)
	}
	pids = again.Pids()
	if err := again.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	assertGone(t, pids)
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels),
		},
	}
}

func daemonSet(name string) *appsv1.DaemonSet {
	labels := map[string]string{"app": name}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels),
		},
	}
}

func podTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{cluster.NodeTypeLabel: cluster.NodeTypeKwok},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.invalid/app:1",
				Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15000}},
			}},
		},
	}
}

// waitRolledOut waits until deployment dep and daemonset ds have completed
// their rollouts (kubectl rollout status semantics), every pod of both is
// Running, Ready, bound by the scheduler to a node, and no old pod remains.
// It returns the deployment's pod names.
func waitRolledOut(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, dep, ds string, nodes int32) []string {
	t.Helper()
	var last string
	var webPods []string
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := client.AppsV1().Deployments(ns).Get(ctx, dep, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		want := *d.Spec.Replicas
		if d.Status.ObservedGeneration < d.Generation || d.Status.UpdatedReplicas != want ||
			d.Status.Replicas != want || d.Status.AvailableReplicas != want {
			last = fmt.Sprintf("deployment %s: %+v", dep, d.Status)
			return false, nil
		}
		s, err := client.AppsV1().DaemonSets(ns).Get(ctx, ds, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if s.Status.ObservedGeneration < s.Generation || s.Status.DesiredNumberScheduled != nodes ||
			s.Status.UpdatedNumberScheduled != nodes || s.Status.NumberAvailable != nodes {
			last = fmt.Sprintf("daemonset %s: %+v", ds, s.Status)
			return false, nil
		}
		webPods = nil
		for app, n := range map[string]int32{dep: want, ds: nodes} {
			pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
			if err != nil {
				return false, err
			}
			if int32(len(pods.Items)) != n {
				last = fmt.Sprintf("%d pods of app=%s, want %d", len(pods.Items), app, n)
				return false, nil
			}
			nodesUsed := map[string]bool{}
			for _, p := range pods.Items {
				if msg := podProblem(&p); msg != "" {
					last = fmt.Sprintf("pod %s: %s", p.Name, msg)
					return false, nil
				}
				nodesUsed[p.Spec.NodeName] = true
				if app == dep {
					webPods = append(webPods, p.Name)
				}
			}
			if app == ds && len(nodesUsed) != int(nodes) {
				last = fmt.Sprintf("daemonset pods on %v, want one on each of %d nodes", nodesUsed, nodes)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("wait for rollout of %s and %s: %v (last: %s)", dep, ds, err, last)
	}
	return webPods
}

// podProblem says why a pod is not yet a running, ready, scheduled pod.
func podProblem(p *corev1.Pod) string {
	switch {
	case p.DeletionTimestamp != nil:
		return "terminating"
	case !strings.HasPrefix(p.Spec.NodeName, "kwok-node-"):
		return "not bound to a kwok node"
	case p.Status.Phase != corev1.PodRunning:
		return "phase " + string(p.Status.Phase)
	}
	var ready, scheduled bool
	for _, c := range p.Status.Conditions {
		switch c.Type {
		case corev1.PodReady:
			ready = c.Status == corev1.ConditionTrue
		case corev1.PodScheduled:
			scheduled = c.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		return "not Ready"
	}
	if !scheduled {
		return "no PodScheduled=True condition (not bound by the scheduler)"
	}
	return ""
}

// forward opens a client-go port-forward to pod port podPort on a free local
// port, as kubectl 1.37 does: websocket tunneling first, SPDY as fallback.
// client-go 0.37 wants the k8s.io/streaming types here: the fallback
// predicate of the deprecated k8s.io/apimachinery/pkg/util/httpstream does
// not recognise the websocket dialer's streaming UpgradeFailureError, so with
// it the SPDY fallback would never be taken.
func forward(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, ns, pod string, podPort int) (int, func(), error) {
	url := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	tunnel, err := portforward.NewSPDYOverWebsocketDialerForStreaming(url, cfg)
	if err != nil {
		return 0, nil, fmt.Errorf("websocket dialer: %w", err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return 0, nil, fmt.Errorf("spdy round tripper: %w", err)
	}
	dialer := portforward.NewFallbackDialerForStreaming(tunnel,
		spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, url),
		func(err error) bool { return streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err) })
	pfCtx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddressesForStreamingWithContext(pfCtx, dialer, []string{"127.0.0.1"},
		[]string{fmt.Sprintf("0:%d", podPort)}, ready, io.Discard, io.Discard)
	if err != nil {
		cancel()
		return 0, nil, err
	}
	done := make(chan struct{})
	var forwardErr error
	go func() {
		forwardErr = pf.ForwardPorts()
		close(done)
	}()
	select {
	case <-ready:
	case <-done:
		cancel()
		return 0, nil, forwardErr
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		cancel()
		<-done
		return 0, nil, fmt.Errorf("forwarded ports %v: %w", ports, err)
	}
	var once sync.Once
	return int(ports[0].Local), func() { once.Do(func() { cancel(); <-done }) }, nil
}

// get fetches http://127.0.0.1:port/ over a new connection.
func get(ctx context.Context, port int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(b), nil
}

// logRSS logs the resident memory of each component (Linux only).
func logRSS(t *testing.T, pids map[string]int) {
	t.Helper()
	var parts []string
	for _, name := range []string{cluster.Etcd, cluster.APIServer, cluster.ControllerManager, cluster.Scheduler, cluster.Kwok} {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[name]))
		if err != nil {
			return
		}
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				parts = append(parts, name+" "+strings.TrimSpace(rest))
			}
		}
	}
	t.Logf("RSS: %s", strings.Join(parts, ", "))
}

// assertGone fails unless every component process and every member of its
// process group is gone, and this test process has no child left.
func assertGone(t *testing.T, pids map[string]int) {
	t.Helper()
	// A stopped child is reaped by the goroutine that waits on it; on a
	// loaded machine that can take a moment, during which it shows as a
	// zombie. Give the reaper up to 10 s, then report what is left.
	var left []string
	_ = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		left = survivors(pids)
		return len(left) == 0, nil
	})
	for _, s := range left {
		t.Error(s)
	}
}

// survivors lists the processes of pids, of their process groups, and the
// test's own children that still exist.
func survivors(pids map[string]int) []string {
	var out []string
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			out = append(out, fmt.Sprintf("%s (pid %d) still exists after stop (kill -0: %v)", name, pid, err))
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out // not Linux: kill -0 above is all we can check
	}
	groups := map[int]string{}
	for name, pid := range pids {
		groups[pid] = name
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after "(comm)": state ppid pgrp ...
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		pgrp, _ := strconv.Atoi(fields[2])
		if name, ok := groups[pgrp]; ok {
			out = append(out, fmt.Sprintf("process %d (state %s) of %s's process group survived stop", pid, fields[0], name))
		}
		if ppid == os.Getpid() {
			out = append(out, fmt.Sprintf("child process %d (state %s) of the test survived stop", pid, fields[0]))
		}
	}
	return out
}

// logTailsOnFailure logs the end of every component log if the test failed.
func logTailsOnFailure(t *testing.T, c *cluster.Cluster) {
	if !t.Failed() {
		return
	}
	for _, name := range []string{cluster.Etcd, cluster.APIServer, cluster.ControllerManager, cluster.Scheduler, cluster.Kwok} {
		data, err := os.ReadFile(c.LogPath(name))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		t.Logf("--- last lines of %s ---\n%s", c.LogPath(name), strings.Join(lines, "\n"))
	}
}

func TestStartReportsAFailingComponentAndCleansUp(t *testing.T) {
	tests := map[string]struct {
		etcdScript string
		timeout    time.Duration
		wantErr    []string
	}{
		"a component that exits at once is reported with its log": {
			etcdScript: "echo 'etcdmain: listen tcp: address already in use' >&2; exit 3",
			timeout:    30 * time.Second,
			wantErr:    []string{"etcd exited during start-up", "exit status 3", "address already in use"},
		},
		"a component that never gets ready is stopped after the timeout": {
			etcdScript: "echo 'waiting for nothing'; exec sleep 300",
			timeout:    time.Second,
			wantErr:    []string{"etcd not ready after 1s", "waiting for nothing"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			bin := t.TempDir()
			for _, b := range []string{"server", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
				script := "#!/bin/sh\nexit 1\n"
				if b == "server" {
					script = "#!/bin/sh\n" + tc.etcdScript + "\n"
				}
				if err := os.WriteFile(bin+"/"+b, []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, a := range []string{"kwok/crds/kwok.x-k8s.io_portforwards.yaml", "kwok/stages/node-initialize.yaml",
				"kwok/stages/node-heartbeat-with-lease.yaml", "kwok/stages/pod-ready.yaml", "kwok/stages/pod-complete.yaml",
				"kwok/stages/pod-delete.yaml"} {
				path := bin + "/assets/" + a
				if err := os.MkdirAll(path[:strings.LastIndexByte(path, '/')], 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			c, err := cluster.Start(t.Context(), cluster.Config{Dir: dir, BinDir: bin, StartTimeout: tc.timeout, StopGrace: 2 * time.Second})
			if err == nil {
				_ = c.Stop()
				t.Fatal("Start succeeded with a broken etcd")
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q:\n%v", want, err)
				}
			}
			if _, err := os.Stat(dir + "/" + cluster.PIDFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file left behind after a failed start (err %v)", err)
			}
			assertGone(t, nil)
		})
	}
}

func TestMissingListsAbsentBinaries(t *testing.T) {
	bin := t.TempDir()
	missing := cluster.Config{BinDir: bin}.Missing()
	for _, want := range []string{bin + "/server", bin + "/kwok", bin + "/assets/" + cluster.KwokPortForwardCRD} {
		if !slices.Contains(missing, want) {
			t.Errorf("Missing() = %v, want it to list %s", missing, want)
		}
	}
}
