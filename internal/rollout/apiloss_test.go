package rollout_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// TestWaitNamesAnAPIServerThatStopped pauses the real kube-apiserver
// (SIGSTOP: its port stays open, nothing answers, as when a control plane
// hangs or a route drops) right after a restart, and checks that Wait
// reports an unreachable API server within a few health checks, not a
// rollout timeout ten minutes later.
func TestWaitNamesAnAPIServerThatStopped(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c := startControlPlane(ctx, t)
	cs := c.Client()
	labels := map[string]string{"app": "web"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ref := rollout.Ref{Kind: rollout.KindDeployment, Namespace: "default", Name: "web"}
	if err := rollout.Restart(ctx, cs, ref, time.Now()); err != nil {
		t.Fatal(err)
	}
	apiserver, err := os.FindProcess(c.Pids()[cluster.APIServer])
	if err != nil {
		t.Fatal(err)
	}
	if err := apiserver.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = apiserver.Signal(syscall.SIGCONT) }) // before Stop, which runs later
	start := time.Now()
	err = rollout.Wait(ctx, cs, ref, rollout.Options{Timeout: 10 * time.Minute})
	took := time.Since(start)
	var u *kube.APIUnreachableError
	var te *rollout.TimeoutError
	if !errors.As(err, &u) || errors.As(err, &te) {
		t.Fatalf("Wait = %v, want a *kube.APIUnreachableError", err)
	}
	if !strings.Contains(err.Error(), "re-run the same command") || !strings.Contains(err.Error(), "deployment/default/web") {
		t.Errorf("error %q should name the workload and how to resume", err)
	}
	t.Logf("stopped API server named after %v (rollout timeout 10m): %v", took.Round(time.Millisecond), err)
}
