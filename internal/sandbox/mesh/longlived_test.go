package mesh

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// targets is a probe's view of two ztunnel targets whose proxies the test
// swaps, as the sandbox does across a pod restart.
type targets struct {
	mu sync.Mutex
	by map[string]*Ztunnel // target → live proxy (nil: none)
}

func (ts *targets) set(target string, z *Ztunnel) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.by[target] = z
}

func (ts *targets) endpoints() []Endpoint {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []Endpoint
	for target, z := range ts.by {
		if z == nil {
			node := strings.TrimPrefix(target, "ztunnel/")
			out = append(out, Endpoint{Kind: KindZtunnel, Name: node, Node: node, Target: target})
			continue
		}
		e := z.Endpoint()
		e.Target = target
		out = append(out, e)
	}
	return out
}

func TestProbeCountsResetsOnDrainAndRefusalsInARestartGap(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	start := func(node string) *Ztunnel {
		z := startZtunnel(t, ZtunnelOptions{Node: node, CA: istiod.client(), TrustPEM: a.rootPEM})
		setIdentities(t, z, ident(node))
		eventually(t, 20*time.Second, node+" holds its certificate", func() bool { return allAvailable(z) })
		return z
	}
	ts := &targets{by: map[string]*Ztunnel{}}
	z1, z2 := start("node-1"), start("node-2")
	ts.set("ztunnel/node-1", z1)
	ts.set("ztunnel/node-2", z2)
	p, err := NewProbe(ProbeOptions{Endpoints: ts.endpoints, Interval: 10 * time.Millisecond, LongLived: 2, PingInterval: 10 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	defer func() { cancel(); <-done }()

	eventually(t, 10*time.Second, "two long-lived connections are open", func() bool { return p.Snapshot().Connections >= 2 })
	if s := p.Snapshot(); s.Resets != 0 || s.Refused != 0 || s.Failures != 0 {
		t.Fatalf("before the restart: resets %d, refused %d, failures %d; want 0", s.Resets, s.Refused, s.Failures)
	}

	// node-2's ztunnel terminates with no successor yet (maxUnavailable 1):
	// new connections to its node are refused, and the long-lived ones end
	// at its drain deadline.
	ts.set("ztunnel/node-2", nil)
	z2.Drain(100*time.Millisecond, "drain deadline of ztunnel/node-2")
	eventually(t, 10*time.Second, "refusals and resets are counted", func() bool {
		s := p.Snapshot()
		return s.Refused > 0 && s.Resets >= 2
	})
	s := p.Snapshot()
	for pair, r := range s.ResetsByPair {
		if !strings.Contains(r.LastReason, "drain deadline of ztunnel/node-2") {
			t.Errorf("%s: reset reason %q does not name the drain", pair, r.LastReason)
		}
	}
	if s.Failures != 0 {
		t.Errorf("failures %d during a restart gap; want 0 (they are refusals)%s", s.Failures, failureReport(s))
	}
	var refusedEvents int
	for _, e := range s.Events {
		if e.Type == EventRefused {
			refusedEvents++
		}
	}
	if refusedEvents == 0 {
		t.Error("no refused event listed")
	}

	// The successor takes over: refusals stop, long-lived connections are
	// re-established.
	ts.set("ztunnel/node-2", start("node-2"))
	p.Reset()
	eventually(t, 10*time.Second, "long-lived connections are re-established", func() bool { return p.Snapshot().Connections >= 2 })
	mark := p.Snapshot().Handshakes
	eventually(t, 10*time.Second, "the probe runs on", func() bool { return p.Snapshot().Handshakes > mark+20 })
	if s := p.Snapshot(); s.Refused != 0 || s.Failures != 0 {
		t.Errorf("after the successor took over: refused %d, failures %d; want 0", s.Refused, s.Failures)
	}
}

func TestDrainDeadlineFollowsZtunnelAndEnvoy(t *testing.T) {
	for name, tc := range map[string]struct {
		kind  Kind
		grace time.Duration
		want  time.Duration
	}{
		"ztunnel with the chart's 30s grace closes at 25s": {KindZtunnel, 30 * time.Second, 25 * time.Second},
		"ztunnel with a 10s grace closes at 9s":            {KindZtunnel, 10 * time.Second, 9 * time.Second},
		"ztunnel with a 3s grace closes at 2s":             {KindZtunnel, 3 * time.Second, 2 * time.Second},
		"envoy drains for terminationDrainDuration":        {KindWaypoint, 30 * time.Second, 5 * time.Second},
		"envoy drain is bounded by the grace period":       {KindGateway, 3 * time.Second, 2 * time.Second},
		"no grace at all": {KindZtunnel, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			if got := DrainDeadline(tc.kind, tc.grace); got != tc.want {
				t.Errorf("DrainDeadline(%s, %s) = %s, want %s", tc.kind, tc.grace, got, tc.want)
			}
		})
	}
}
