package kube

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/internal/kube/kubetest"
)

func clientFor(t *testing.T, host string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestMonitorAPINamesALostAPIServer(t *testing.T) {
	host := kubetest.BlackHole(t)
	opts := HealthOptions{Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Failures: 3}
	ctx, cancel := MonitorAPI(context.Background(), clientFor(t, host), opts)
	defer cancel()
	select {
	case <-ctx.Done():
	case <-time.After(time.Minute): // hang guard
		t.Fatal("a black-holed API server was never declared lost")
	}
	var u *APIUnreachableError
	if !errors.As(context.Cause(ctx), &u) || u.Failures != 3 || u.Server != host[len("http://"):] {
		t.Fatalf("cause %v, want an *APIUnreachableError after 3 failures naming %s", context.Cause(ctx), host)
	}
	if err := UnreachableCause(ctx, context.Canceled); !errors.As(err, &u) {
		t.Errorf("UnreachableCause = %v", err)
	}
	t.Logf("%v", u)
}

func TestMonitorAPIKeepsAHealthyOrForbiddingServer(t *testing.T) {
	for name, code := range map[string]int{"ready": http.StatusOK, "forbidden /readyz": http.StatusForbidden} {
		t.Run(name, func(t *testing.T) {
			var probes atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/readyz" {
					probes.Add(1)
				}
				w.WriteHeader(code)
			}))
			defer srv.Close()
			ctx, cancel := MonitorAPI(context.Background(), clientFor(t, srv.URL), HealthOptions{Interval: 20 * time.Millisecond, Failures: 2})
			defer cancel()
			err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
				return probes.Load() >= 5 || ctx.Err() != nil, nil
			})
			if err != nil || ctx.Err() != nil {
				t.Fatalf("after %d probes: ctx %v (cause %v), poll %v; want a live context", probes.Load(), ctx.Err(), context.Cause(ctx), err)
			}
		})
	}
}

func TestMonitorAPILeavesTheFakeClientsetAlone(t *testing.T) {
	ctx, cancel := MonitorAPI(context.Background(), fake.NewClientset(), HealthOptions{Interval: time.Millisecond})
	if ctx.Err() != nil {
		t.Fatal("cancelled at once")
	}
	cancel()
}
