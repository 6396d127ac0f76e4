package kube

import (
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"k8s.io/client-go/rest"
)

// CountRequests makes cfg count every HTTP request it sends (API calls and
// port-forward upgrades) into the returned counter, for the figures of a
// rotation or a fleet walk.
func CountRequests(cfg *rest.Config) *atomic.Int64 {
	n := &atomic.Int64{}
	prev := cfg.WrapTransport
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		if prev != nil {
			rt = prev(rt)
		}
		return countingTransport{rt: rt, n: n}
	}
	return n
}

type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.rt.RoundTrip(r)
}

// LogRequests makes cfg log every HTTP request it sends at debug level
// (method, path, status, duration): what `meshca -v` shows of the API
// traffic. Nothing is formatted unless debug logging is on.
func LogRequests(cfg *rest.Config) {
	prev := cfg.WrapTransport
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		if prev != nil {
			rt = prev(rt)
		}
		return loggingTransport{rt: rt}
	}
}

type loggingTransport struct{ rt http.RoundTripper }

func (t loggingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !slog.Default().Enabled(r.Context(), slog.LevelDebug) {
		return t.rt.RoundTrip(r)
	}
	start := time.Now()
	resp, err := t.rt.RoundTrip(r)
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		slog.Debug("api request", "method", r.Method, "path", r.URL.Path, "error", err, "took", took)
		return resp, err
	}
	slog.Debug("api request", "method", r.Method, "path", r.URL.Path, "status", resp.StatusCode, "took", took)
	return resp, nil
}
