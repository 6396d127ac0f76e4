package rollout

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/internal/kube"
)

// TestWaitNamesALostAPIServer: an API server that stops answering during a
// wait is reported as unreachable within a few health checks, not as a
// rollout that did not complete within its (here ten-minute) timeout.
func TestWaitNamesALostAPIServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "http://" + l.Addr().String()})
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
