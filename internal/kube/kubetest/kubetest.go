// Package kubetest holds test helpers for code that talks to an API server.
package kubetest

import (
	"net"
	"sync"
	"testing"
)

// BlackHole listens on a loopback port, accepts connections and never
// answers: an API server that went away without closing its port (a paused
// process, a dropped route). It returns the http:// URL; everything is
// closed when the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
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
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "http://" + l.Addr().String()
}
