package rollout

import (
	"context"
	"errors"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/kube/kubetest"
)

// TestWaitNamesALostAPIServer: an API server that stops answering during a
// wait is reported as unreachable within a few health checks, not as a
// rollout that did not complete within its (here ten-minute) timeout.
func TestWaitNamesALostAPIServer(t *testing.T) {
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: kubetest.BlackHole(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // hang guard
	defer cancel()
	start := time.Now()
	err = Wait(ctx, cs, Ref{Kind: KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"}, Options{Timeout: 10 * time.Minute, HealthInterval: 100 * time.Millisecond})
	var u *kube.APIUnreachableError
	var te *TimeoutError
	if !errors.As(err, &u) || errors.As(err, &te) {
		t.Fatalf("Wait = %v, want an *kube.APIUnreachableError", err)
	}
	t.Logf("lost API server named after %v: %v", time.Since(start).Round(time.Millisecond), err)
}
