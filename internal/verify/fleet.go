package verify

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
)

// DefaultParallel is how many proxies are read at once. Reading one proxy
// is a port-forward through the API server to the pod (two round trips and
// a stream, 12-24 ms on an idle control plane), so the walk is bound by
// latency, not by meshca's CPU: 32 readers hide that latency well enough
// to read a thousand proxies in a few seconds, while keeping the load on
// the API server (each reader holds one port-forward stream) and meshca's
// memory (each reader holds one dump, up to proxy.MaxDumpSize) modest.
// Raise it with --parallel on a big fleet with a strong control plane.
const DefaultParallel = 32

// DefaultTimeout bounds the read of one proxy, retries included: enough for
// kube.Fetcher's default attempts on a slow pod, short enough that a fleet
// with a few dead pods still finishes promptly.
const DefaultTimeout = 30 * time.Second

// Fetch reads the dump of one proxy (DumpPath(p.Kind) on its admin port).
// It must honour ctx's deadline. An error makes the proxy unreadable; a
// *kube.Error's Reason is kept.
type Fetch func(ctx context.Context, p *mesh.Proxy) ([]byte, error)

// Options tunes Fleet.
type Options struct {
	// Parallel bounds how many proxies are read at once (DefaultParallel
	// when 0).
	Parallel int
	// Timeout bounds the read of each proxy (DefaultTimeout when 0).
	Timeout time.Duration
	// Now is the clock (time.Now when nil): the report's time, durations,
	// and the validity of leafs.
	Now func() time.Time
	// Progress, when set, is called after each proxy with how many are
	// done, never concurrently.
	Progress func(done, total int)
}

// Fleet reads every proxy with fetch, at most opts.Parallel at a time, and
// verifies each against exp. A proxy that is not ready is not read; a
// proxy that cannot be read or parsed is reported unreadable, and the walk
// goes on: one bad pod never aborts it. When ctx ends, the proxies not yet
// read are reported unreadable and ctx's error is returned with the report.
// Results keep the order of proxies.
func Fleet(ctx context.Context, proxies []mesh.Proxy, fetch Fetch, exp Expectation, opts Options) (*Report, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	start := now()
	results := make([]Result, len(proxies))

	var (
		mu   sync.Mutex
		done int
	)
	finish := func(i int, r Result) {
		results[i] = r
		if opts.Progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		done++
		opts.Progress(done, len(proxies))
	}

	work := make(chan int)
	var wg sync.WaitGroup
	for range min(parallel, len(proxies)) {
		wg.Go(func() {
			for i := range work {
				finish(i, read(ctx, &proxies[i], fetch, exp, timeout, now))
			}
		})
	}
	for i := range proxies {
		if !proxies[i].Ready {
			finish(i, notReady(&proxies[i]))
			continue
		}
		work <- i
	}
	close(work)
	wg.Wait()

	rep := NewReport(results, exp, start)
	rep.Walk = Walk{Parallel: parallel, Timeout: timeout, Read: now().Sub(start)}
	return rep, ctx.Err()
}

// read fetches and checks one proxy within its timeout.
func read(ctx context.Context, p *mesh.Proxy, fetch Fetch, exp Expectation, timeout time.Duration, now func() time.Time) Result {
	if err := ctx.Err(); err != nil {
		return unreadable(p, "Canceled", fmt.Errorf("not read: %w", err))
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dump, err := fetch(pctx, p)
	if err != nil {
		reason := string(kube.ReasonTimeout)
		var kerr *kube.Error
		switch {
		case errors.As(err, &kerr):
			reason = string(kerr.Reason)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			err = fmt.Errorf("no answer within %s: %w", timeout, err)
		case ctx.Err() != nil:
			reason = "Canceled"
		default:
			reason = "Fetch"
		}
		return unreadable(p, reason, err)
	}
	return Check(p, dump, exp, now())
}

// Counts are the numbers of proxies by status.
type Counts struct {
	// Total is every proxy discovered.
	Total int `json:"total"`
	// Match, Stale, NotRefreshing, Expiring, NothingToVerify, Unreadable
	// and NotReady count the proxies of each Status.
	Match           int `json:"match"`
	Stale           int `json:"stale"`
	NotRefreshing   int `json:"notRefreshing"`
	Expiring        int `json:"expiring"`
	NothingToVerify int `json:"nothingToVerify"`
	Unreadable      int `json:"unreadable"`
	NotReady        int `json:"notReady"`
}

// Add counts one proxy of status s.
func (c *Counts) Add(s Status) {
	c.Total++
	switch s {
	case StatusMatch:
		c.Match++
	case StatusStale:
		c.Stale++
	case StatusNotRefreshing:
		c.NotRefreshing++
	case StatusExpiring:
		c.Expiring++
	case StatusNothingToVerify:
		c.NothingToVerify++
	case StatusUnreadable:
		c.Unreadable++
	case StatusNotReady:
		c.NotReady++
	}
}

// FailingByStatus says why the failing proxies fail, status by status
// ("2 stale, 1 not refreshing"); empty when none fails.
func (c Counts) FailingByStatus() string {
	var why []string
	for _, x := range []struct {
		n    int
		what string
	}{{c.Stale, "stale"}, {c.NotRefreshing, "not refreshing"}, {c.Expiring, "expiring"}, {c.Unreadable, "unreadable"}, {c.NotReady, "not ready"}} {
		if x.n > 0 {
			why = append(why, fmt.Sprintf("%d %s", x.n, x.what))
		}
	}
	return strings.Join(why, ", ")
}

// Failing is how many proxies fail: stale, not refreshing, expiring,
// unreadable or not ready.
func (c Counts) Failing() int {
	return c.Stale + c.NotRefreshing + c.Expiring + c.Unreadable + c.NotReady
}

// KindSummary counts the proxies of one kind.
type KindSummary struct {
	// Kind of proxy.
	Kind mesh.Kind `json:"kind"`
	Counts
}

// Walk describes how the fleet was read.
type Walk struct {
	// Parallel is the bound on concurrent reads.
	Parallel int
	// Timeout is the bound on each read.
	Timeout time.Duration
	// Discovery is how long discovering the fleet took (set by the
	// caller that discovered it).
	Discovery time.Duration
	// Read is how long reading and checking every proxy took.
	Read time.Duration
}

// NewReport summarizes results (every proxy, in report order) verified
// against exp at time t.
func NewReport(results []Result, exp Expectation, t time.Time) *Report {
	r := &Report{Time: t.UTC(), Expectation: exp, Proxies: results}
	byKind := map[mesh.Kind]*KindSummary{}
	for _, k := range mesh.Kinds {
		r.Kinds = append(r.Kinds, KindSummary{Kind: k})
	}
	for i := range r.Kinds {
		byKind[r.Kinds[i].Kind] = &r.Kinds[i]
	}
	for i := range results {
		res := &results[i]
		ks := byKind[res.Kind]
		if ks == nil {
			r.Kinds = append(r.Kinds, KindSummary{Kind: res.Kind})
			ks = &r.Kinds[len(r.Kinds)-1]
			byKind = map[mesh.Kind]*KindSummary{}
			for j := range r.Kinds {
				byKind[r.Kinds[j].Kind] = &r.Kinds[j]
			}
		}
		ks.Add(res.Status)
		r.Total.Add(res.Status)
	}
	return r
}
