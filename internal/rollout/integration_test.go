package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// TestRestartAndWaitOnARealControlPlane restarts a Deployment, a DaemonSet
// and a StatefulSet on a real kube-apiserver, controller-manager and
// scheduler with kwok nodes, and checks that RestartAndWait returns only
// once every pod has really been replaced and is Ready; then that Wait on a
// Deployment whose new pods cannot be scheduled times out saying what is
// pending.
func TestRestartAndWaitOnARealControlPlane(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c := startControlPlane(ctx, t)
	began := time.Now()
	const nodes = 3
	if err := c.AddNodes(ctx, nodes, "kwok-node"); err != nil {
		t.Fatalf("add nodes: %v", err)
	}
	t.Logf("%d kwok nodes ready in %v", nodes, since(began))

	client := c.Client()
	const ns = "rollout-test"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}

	t.Run("restart and wait replaces every pod before returning", func(t *testing.T) {
		workloads := []struct {
			ref  rollout.Ref
			pods int
		}{
			{rollout.Ref{Kind: rollout.KindDeployment, Namespace: ns, Name: "web"}, 2},
			{rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: ns, Name: "agent"}, nodes},
			{rollout.Ref{Kind: rollout.KindStatefulSet, Namespace: ns, Name: "db"}, 2},
		}
		createWorkloads(ctx, t, client, ns)
		began := time.Now()
		var refs []rollout.Ref
		for _, w := range workloads {
			if err := rollout.Wait(ctx, client, w.ref, rollout.Options{Timeout: 2 * time.Minute}); err != nil {
				t.Fatalf("initial rollout: %v", err)
			}
			refs = append(refs, w.ref)
		}
		t.Logf("initial rollout of %v complete in %v", refs, since(began))

		before := map[rollout.Ref]map[types.UID]bool{}
		for _, w := range workloads {
			pods := activePods(ctx, t, client, ns, w.ref.Name)
			if len(pods) != w.pods {
				t.Fatalf("%s has %d pods before the restart, want %d", w.ref, len(pods), w.pods)
			}
			before[w.ref] = map[types.UID]bool{}
			for _, p := range pods {
				before[w.ref][p.UID] = true
			}
			owner, err := rollout.Owner(ctx, client, &pods[0])
			if err != nil {
				t.Errorf("Owner of pod %s: %v", pods[0].Name, err)
			} else if owner != w.ref {
				t.Errorf("Owner of pod %s = %s, want %s", pods[0].Name, owner, w.ref)
			}
		}

		var (
			mu       sync.Mutex
			progress []string
			done     []time.Duration
		)
		began = time.Now()
		err := rollout.RestartAndWait(ctx, client, refs, rollout.Options{
			Timeout: 2 * time.Minute,
			Progress: func(msg string) {
				mu.Lock()
				defer mu.Unlock()
				progress = append(progress, fmt.Sprintf("%7v %s", since(began), msg))
				if strings.Contains(msg, "successfully rolled out") || strings.Contains(msg, "roll out complete") {
					done = append(done, time.Since(began))
				}
			},
		})
		elapsed := time.Since(began)
		if err != nil {
			t.Fatalf("RestartAndWait: %v", err)
		}
		// Right after RestartAndWait returns: every workload's pods are new
		// and Ready; old pods are at most terminating.
		for _, w := range workloads {
			checkReplaced(ctx, t, client, w.ref, w.pods, before[w.ref])
		}
		mu.Lock()
		defer mu.Unlock()
		t.Logf("RestartAndWait of %d workloads took %v; progress:\n%s", len(refs), elapsed.Round(time.Millisecond), strings.Join(progress, "\n"))
		if len(done) != len(refs) {
			t.Fatalf("%d completion messages, want one per workload (%d)", len(done), len(refs))
		}
		prev := time.Duration(0)
		for i, d := range done {
			t.Logf("%s: restart + wait %v", refs[i], (d - prev).Round(time.Millisecond))
			prev = d
		}
	})

	t.Run("wait times out on a deployment whose pods cannot become ready", func(t *testing.T) {
		ref := rollout.Ref{Kind: rollout.KindDeployment, Namespace: ns, Name: "stuck"}
		if _, err := client.AppsV1().Deployments(ns).Create(ctx, deploymentFor(ref.Name, 2), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", ref, err)
		}
		if err := rollout.Wait(ctx, client, ref, rollout.Options{Timeout: 2 * time.Minute}); err != nil {
			t.Fatalf("initial rollout: %v", err)
		}
		oldPods := activePods(ctx, t, client, ns, ref.Name)
		patch := []byte(`{"spec":{"template":{"spec":{"nodeSelector":{"meshca.test/no-such-node":"true"}}}}}`)
		if _, err := client.AppsV1().Deployments(ns).Patch(ctx, ref.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("patch node selector of %s: %v", ref, err)
		}
		if err := rollout.Restart(ctx, client, ref, time.Now()); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		const timeout = 5 * time.Second
		var last string
		began := time.Now()
		err := rollout.Wait(ctx, client, ref, rollout.Options{Timeout: timeout, Progress: func(msg string) { last = msg }})
		elapsed := time.Since(began)
		var te *rollout.TimeoutError
		if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait on an unschedulable rollout: err = %v, want a *TimeoutError", err)
		}
		t.Logf("Wait timed out after %v (timeout %v): %v", elapsed.Round(time.Millisecond), timeout, err)
		for _, want := range []string{"deployment/" + ns + "/stuck", `Waiting for deployment "stuck" rollout to finish`, "new replicas have been updated"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("timeout error %q does not contain %q", err, want)
			}
		}
		if te.Ref != ref || te.Status != last {
			t.Errorf("TimeoutError{Ref: %s, Status: %q}, want Ref %s and the last progress message %q", te.Ref, te.Status, ref, last)
		}
		// The old pods keep serving: the rolling update never took them down.
		if got := activePods(ctx, t, client, ns, ref.Name); !containsAll(got, oldPods) {
			t.Errorf("old pods of %s gone while the new ones cannot be scheduled", ref)
		}
	})
}

// createWorkloads creates deployment web (2 replicas), daemonset agent and
// statefulset db (2 replicas) on the kwok nodes.
func createWorkloads(ctx context.Context, t *testing.T, client kubernetes.Interface, ns string) {
	t.Helper()
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, deploymentFor("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment web: %v", err)
	}
	agent := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: podTemplate("agent"),
		},
	}
	if _, err := client.AppsV1().DaemonSets(ns).Create(ctx, agent, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create daemonset agent: %v", err)
	}
	db := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](2),
			ServiceName: "db",
			Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template:    podTemplate("db"),
		},
	}
	if _, err := client.AppsV1().StatefulSets(ns).Create(ctx, db, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create statefulset db: %v", err)
	}
}

func deploymentFor(name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: podTemplate(name),
		},
	}
}

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{cluster.NodeTypeLabel: cluster.NodeTypeKwok},
			Containers:   []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}
}

// activePods lists the pods labelled app=<app> that are not terminating.
func activePods(ctx context.Context, t *testing.T, client kubernetes.Interface, ns, app string) []corev1.Pod {
	t.Helper()
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatalf("list pods app=%s: %v", app, err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

// checkReplaced asserts that ref now has exactly want pods that are not
// terminating, none of them one of the old pods, all Running and Ready (a
// DaemonSet's on distinct nodes), and that any old pod left is terminating.
func checkReplaced(ctx context.Context, t *testing.T, client kubernetes.Interface, ref rollout.Ref, want int, old map[types.UID]bool) {
	t.Helper()
	list, err := client.CoreV1().Pods(ref.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + ref.Name})
	if err != nil {
		t.Fatalf("list pods of %s: %v", ref, err)
	}
	active, terminating := 0, 0
	nodesUsed := map[string]bool{}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			terminating++
			continue
		}
		active++
		nodesUsed[p.Spec.NodeName] = true
		if old[p.UID] {
			t.Errorf("%s: pod %s (uid %s) survived the restart", ref, p.Name, p.UID)
		}
		if !ready(&p) {
			t.Errorf("%s: pod %s is not Running and Ready when the wait returned (phase %s, conditions %v)", ref, p.Name, p.Status.Phase, p.Status.Conditions)
		}
	}
	if active != want {
		t.Errorf("%s: %d pods not terminating when the wait returned, want %d", ref, active, want)
	}
	if ref.Kind == rollout.KindDaemonSet && len(nodesUsed) != want {
		t.Errorf("%s: pods on nodes %v, want one on each of %d nodes", ref, nodesUsed, want)
	}
	t.Logf("%s: %d new Ready pods, %d old pods still terminating", ref, active, terminating)
}

func ready(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func containsAll(pods, want []corev1.Pod) bool {
	have := map[types.UID]bool{}
	for _, p := range pods {
		have[p.UID] = true
	}
	for _, p := range want {
		if !have[p.UID] {
			return false
		}
	}
	return true
}

// startControlPlane starts etcd, kube-apiserver, controller-manager,
// scheduler and kwok for the test (skipping without binaries, failing under
// CI=true) and stops them when it ends.
func startControlPlane(ctx context.Context, t *testing.T) *cluster.Cluster {
	t.Helper()
	bin, err := cluster.FindBinDir()
	if err != nil {
		t.Fatalf("find bin dir: %v", err)
	}
	cfg := cluster.Config{Dir: t.TempDir(), BinDir: bin, Logf: t.Logf}
	if missing := cfg.Missing(); len(missing) > 0 {
		msg := fmt.Sprintf("control-plane binaries not built (missing %s); run make controlplane", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	began := time.Now()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	t.Cleanup(func() { logTailsOnFailure(t, c) })
	t.Logf("control plane started in %v", since(began))
	return c
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// logTailsOnFailure logs the end of each component log if the test failed.
func logTailsOnFailure(t *testing.T, c *cluster.Cluster) {
	if !t.Failed() {
		return
	}
	for _, name := range []string{cluster.APIServer, cluster.ControllerManager, cluster.Scheduler, cluster.Kwok} {
		data, err := os.ReadFile(c.LogPath(name))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		t.Logf("--- last lines of %s ---\n%s", c.LogPath(name), strings.Join(lines, "\n"))
	}
}
