package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// adminServer is a proxy's admin HTTP server on 127.0.0.1:0, standing in for
// port 15000 of the pod.
type adminServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

func startAdmin(name string, h http.Handler, log *slog.Logger) (*adminServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("%s: admin listener: %w", name, err)
	}
	a := &adminServer{
		ln:   ln,
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("admin server stopped", "proxy", name, "err", err)
		}
	}()
	return a, nil
}

func (a *adminServer) addr() string { return a.ln.Addr().String() }

func (a *adminServer) port() int {
	_, p, _ := net.SplitHostPort(a.addr())
	n, _ := strconv.Atoi(p)
	return n
}

// close shuts the server down, giving in-flight requests a moment, and waits
// for it.
func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		_ = a.srv.Close()
	}
	<-a.done
}

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// getOnly wraps a handler to refuse methods other than GET and HEAD.
func getOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	}
}

// startServers starts a proxy's two listeners: the admin server answering
// GET /config_dump with dump(request), and the mTLS server the probe
// dials. On failure nothing is left listening.
func startServers(name string, p Proxy, dump func(*http.Request) ([]byte, error), identityFor func(string) (string, bool), now func() time.Time, log *slog.Logger) (*adminServer, *mtlsServer, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", getOnly(func(w http.ResponseWriter, r *http.Request) {
		body, err := dump(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, body)
	}))
	admin, err := startAdmin(name, mux, log)
	if err != nil {
		return nil, nil, err
	}
	mtls, err := startMTLS(name, "127.0.0.1:0", p.credentials, identityFor, now, log)
	if err != nil {
		admin.close()
		return nil, nil, err
	}
	return admin, mtls, nil
}
