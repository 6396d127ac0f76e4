package scenario_test

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// proxyPods lists the ztunnel, waypoint and gateway pods that are not
// terminating.
func proxyPods(t *testing.T, sb *sandbox.Sandbox) []corev1.Pod {
	t.Helper()
	pods, err := sb.Client().CoreV1().Pods("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && len(p.Spec.ReadinessGates) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// singleFetch opens one port-forward to the admin port of every proxy pod,
// without retries, as istioctl does.
func singleFetch(t *testing.T, sb *sandbox.Sandbox, pods []corev1.Pod) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", sb.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.NewClientFromConfig(cfg, "", false)
	if err != nil {
		t.Fatal(err)
	}
	f := kube.NewFetcher(c)
	f.Attempts = 1
	for _, p := range pods {
		if _, err := f.Get(context.Background(), p.Namespace, p.Name, "/config_dump"); err != nil {
			t.Errorf("a single port-forward to %s/%s failed right after it was reported ready: %v", p.Namespace, p.Name, err)
		}
	}
}

// TestProxyPodsAreReadyOnlyWhenTheirAdminPortAnswers: once `sandbox up`
// returns, and once a rollout restart has completed, one unretried
// port-forward reaches every proxy pod; and the pods' Ready condition is
// the sandbox's (through the readiness gate), not kwok's.
func TestProxyPodsAreReadyOnlyWhenTheirAdminPortAnswers(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{}))
	pods := proxyPods(t, sb)
	if len(pods) < 6 {
		t.Fatalf("%d proxy pods with the readiness gate, want 3 ztunnels, 2 waypoints and a gateway", len(pods))
	}
	singleFetch(t, sb, pods)

	ctx := context.Background()
	ztunnel := rollout.Ref{Kind: "DaemonSet", Namespace: sandbox.IstioNamespace, Name: sandbox.ZtunnelName}
	if err := rollout.RestartAndWait(ctx, sb.Client(), []rollout.Ref{ztunnel}, rollout.Options{Timeout: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	singleFetch(t, sb, proxyPods(t, sb))

	// A gated pod nothing backs is Running but never Ready: kwok leaves the
	// gate to the sandbox.
	orphan := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gated-orphan", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: sandbox.ProxyReadyGate}},
			Tolerations:    []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
	if _, err := sb.Client().CoreV1().Pods("default").Create(ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := sb.Client().CoreV1().Pods("default").Get(ctx, orphan.Name, metav1.GetOptions{})
		got = p
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("the gated pod never ran: %+v", got.Status)
	}
	for _, c := range got.Status.Conditions {
		if (c.Type == corev1.PodReady || c.Type == sandbox.ProxyReadyGate) && c.Status == corev1.ConditionTrue {
			t.Errorf("condition %s of a gated pod nothing backs is True: kwok decided readiness", c.Type)
		}
	}
}

// TestMaxUnavailableRefusesConnections: a ztunnel DaemonSet rolled with
// maxUnavailable 1 and no surge leaves each node without a ztunnel for a
// moment, and the probe must count the refused connections; the chart's
// strategy (maxSurge 1, maxUnavailable 0) refuses none.
func TestMaxUnavailableRefusesConnections(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{}))
	ctx := context.Background()
	ztunnel := rollout.Ref{Kind: "DaemonSet", Namespace: sandbox.IstioNamespace, Name: sandbox.ZtunnelName}
	restart := func(what string) {
		t.Helper()
		sb.ResetProbe()
		if err := rollout.RestartAndWait(ctx, sb.Client(), []rollout.Ref{ztunnel}, rollout.Options{Timeout: 2 * time.Minute}); err != nil {
			t.Fatal(err)
		}
		settle(t, sb)
		s := sb.Probe()
		t.Logf("%s: %d handshakes, %d failures, %d refused, %d resets of %d long-lived connections, restarts %v",
			what, s.Handshakes, s.Failures, s.Refused, s.Resets, s.Connections, s.Restarts)
	}
	restart("chart strategy (maxSurge 1, maxUnavailable 0)")
	if s := sb.Probe(); s.Refused != 0 || s.Failures != 0 || s.Restarts["ztunnel"] != 3 {
		t.Errorf("with the chart's strategy: refused %d, failures %d, ztunnel restarts %d; want 0, 0, 3\n%s", s.Refused, s.Failures, s.Restarts["ztunnel"], events(s))
	}
	if s := sb.Probe(); s.Resets == 0 {
		t.Errorf("a ztunnel restart ended no long-lived connection: the drain is not modelled")
	}

	patch := `{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":0,"maxUnavailable":1}}}}`
	if _, err := sb.Client().AppsV1().DaemonSets(sandbox.IstioNamespace).Patch(ctx, sandbox.ZtunnelName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	restart("maxSurge 0, maxUnavailable 1")
	s := sb.Probe()
	if s.Refused == 0 {
		t.Errorf("a rollout with maxUnavailable 1 refused no connection")
	}
	for pair, r := range s.RefusedByPair {
		if !strings.Contains(r.LastReason, "restart gap") {
			t.Errorf("%s: refusal reason %q", pair, r.LastReason)
		}
	}
}

// TestIdleSandboxStaysHealthy: a sandbox left alone for five minutes keeps
// its nodes Ready (kwok renews node leases) and still passes meshca check.
func TestIdleSandboxStaysHealthy(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{}))
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Minute)
	err := wait.PollUntilContextTimeout(ctx, 5*time.Second, 6*time.Minute, true, func(ctx context.Context) (bool, error) {
		nodes, err := sb.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, n := range nodes.Items {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
					return false, &nodeNotReady{n.Name, string(c.Status), time.Until(deadline)}
				}
			}
		}
		return time.Now().After(deadline), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := sb.Client().AppsV1().DaemonSets(sandbox.IstioNamespace).Get(ctx, sandbox.ZtunnelName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !dsReady(ds) {
		t.Errorf("after 5 idle minutes the ztunnel DaemonSet has %d of %d pods ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	if code, out := meshca(t, "check", "--kubeconfig", sb.Kubeconfig()); code != 0 {
		t.Errorf("meshca check after 5 idle minutes: exit %d\n%s", code, out)
	}
}

type nodeNotReady struct {
	node, status string
	left         time.Duration
}

func (e *nodeNotReady) Error() string {
	return "node " + e.node + " turned Ready=" + e.status + " while idle (" + e.left.Round(time.Second).String() + " before the 5 minutes were up)"
}

func dsReady(ds *appsv1.DaemonSet) bool {
	return ds.Status.DesiredNumberScheduled > 0 && ds.Status.NumberReady == ds.Status.DesiredNumberScheduled
}
