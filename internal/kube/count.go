package kube

import (
	"net/http"
	"sync/atomic"

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
