package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"time"
)

// Probe defaults.
const (
	DefaultProbeInterval    = 50 * time.Millisecond
	DefaultProbeTimeout     = 2 * time.Second
	DefaultProbeConcurrency = 4
	DefaultProbeMaxPerRound = 32
	// DefaultLongLived is the number of long-lived connections the Probe
	// keeps open per pair kind.
	DefaultLongLived = 4
	// DefaultPingInterval is the pause between two messages on a
	// long-lived connection.
	DefaultPingInterval = 250 * time.Millisecond
	// DefaultMaxEvents bounds Snapshot.Events.
	DefaultMaxEvents = 1000
)

// ProbeOptions configures a Probe.
type ProbeOptions struct {
	// Endpoints returns the live proxies, one Endpoint per logical target
	// (a target with no live proxy has a nil Proxy); called once per round.
	// Required.
	Endpoints func() []Endpoint
	// Interval is the pause between rounds; DefaultProbeInterval when zero.
	Interval time.Duration
	// Timeout bounds one connection (dial, handshake and the server's
	// reply) and one ping; DefaultProbeTimeout when zero.
	Timeout time.Duration
	// Concurrency is the number of handshakes in flight;
	// DefaultProbeConcurrency when zero.
	Concurrency int
	// MaxPerRound caps the handshakes of one round (chosen at random among
	// the round's pairs); DefaultProbeMaxPerRound when zero.
	MaxPerRound int
	// LongLived is the number of long-lived connections kept open per pair
	// kind; DefaultLongLived when zero, none when negative.
	LongLived int
	// PingInterval is the pause between messages on a long-lived
	// connection; DefaultPingInterval when zero.
	PingInterval time.Duration
	// MaxEvents bounds the events kept (the newest are kept);
	// DefaultMaxEvents when zero.
	MaxEvents int
	// Now is the clock of Since and of event times; time.Now when nil.
	Now func() time.Time
	// Logger receives failures at debug level; slog.Default() when nil.
	Logger *slog.Logger
}

// Probe continuously opens real TLS 1.3 mutual-TLS connections between the
// simulated proxies — ztunnel to ztunnel across nodes, ztunnel to waypoint
// and back, gateway to waypoint, sidecar to sidecar and to waypoint, and
// across clusters — with each side's current certificate and roots. Besides
// these short connections it keeps long-lived ones open per pair kind,
// exchanging a message every PingInterval, and counts everything a user of
// the mesh would feel: failed handshakes, refused connections (no live
// proxy for a target: a restart gap), long-lived connections that ended
// without the Probe closing them (resets, with the reason), and failed
// certificate requests.
type Probe struct {
	opts ProbeOptions
	log  *slog.Logger

	mu         sync.Mutex
	generation int
	since      time.Time
	counts     counts
	skipped    int64
	byPair     map[string]*PairFailures
	refusedBy  map[string]*PairFailures
	resetsBy   map[string]*PairResets
	issuanceBy map[string]*PairFailures
	byKind     map[string]*KindCounts
	restarts   map[string]int64
	events     []Event
	dropped    int64

	longMu sync.Mutex
	long   map[*longConn]struct{}
	longWG sync.WaitGroup
}

type counts struct {
	handshakes, failures, refused, resets, connections, issuance int64
	admissions, admissionFailures                                int64
}

// PairFailures counts the failures of one ordered pair of proxies (or, for
// issuance failures, of one proxy).
type PairFailures struct {
	Count      int64     `json:"count"`
	LastReason string    `json:"lastReason"`
	Last       time.Time `json:"last"`
}

// PairResets counts the long-lived connections of one ordered pair that
// ended without the Probe closing them, by reason.
type PairResets struct {
	Count      int64            `json:"count"`
	ByReason   map[string]int64 `json:"byReason"`
	LastReason string           `json:"lastReason"`
	Last       time.Time        `json:"last"`
}

// KindCounts are the counters of one pair kind ("ztunnel->waypoint",
// "cross-cluster ztunnel->ztunnel", …).
type KindCounts struct {
	Handshakes  int64 `json:"handshakes"`
	Failures    int64 `json:"failures"`
	Refused     int64 `json:"refused"`
	Connections int64 `json:"connections"`
	Resets      int64 `json:"resets"`
}

// Event types.
const (
	EventFailure  = "failure"
	EventRefused  = "refused"
	EventReset    = "reset"
	EventIssuance = "issuance"
	// EventAdmission is a pod creation the API server refused because a
	// webhook call failed.
	EventAdmission = "admission"
)

// Event is one disruption, with its time, so that a caller can attribute
// it to a phase.
type Event struct {
	Time time.Time `json:"time"`
	// Type is failure, refused, reset or issuance.
	Type string `json:"type"`
	// Pair is "src -> dst" for connections; Proxy names the proxy of an
	// issuance failure.
	Pair     string `json:"pair,omitempty"`
	PairKind string `json:"pairKind,omitempty"`
	Proxy    string `json:"proxy,omitempty"`
	Reason   string `json:"reason"`
}

// Snapshot is the Probe's counters; its JSON is the output of
// `meshca sandbox probe -o json`.
type Snapshot struct {
	// Handshakes counts attempted connections (short and long-lived),
	// failed ones included.
	Handshakes int64 `json:"handshakes"`
	// Failures counts failed handshakes, and pairs that could not run
	// because an end lost or never got its certificate through a failed
	// CSR.
	Failures int64 `json:"failures"`
	// Refused counts connection attempts that found no live proxy for a
	// target (a restart gap).
	Refused int64 `json:"refused"`
	// Resets counts long-lived connections that ended without the Probe
	// closing them.
	Resets int64 `json:"resets"`
	// Connections counts long-lived connections opened.
	Connections int64 `json:"connections"`
	// IssuanceFailures counts failed CSRs: of the simulated proxies as
	// they fail, of a real pilot-agent from its own counter
	// (istio_agent_num_failed_outgoing_requests{request_type="csr"}).
	IssuanceFailures int64 `json:"issuanceFailures"`
	// Skipped counts pairs not attempted because an end held no
	// certificate yet without having failed to get one (Initializing), or
	// because a proxy stopped during the attempt after a newer one took
	// over its target.
	Skipped int64 `json:"skipped"`
	// FailuresByPair is keyed "ztunnel/node-1 -> waypoint/ns/waypoint-xyz".
	FailuresByPair map[string]PairFailures `json:"failuresByPair"`
	// RefusedByPair is keyed like FailuresByPair.
	RefusedByPair map[string]PairFailures `json:"refusedByPair"`
	// ResetsByPair is keyed like FailuresByPair.
	ResetsByPair map[string]PairResets `json:"resetsByPair"`
	// Admissions counts the admission checks: throwaway objects created
	// (dry run) through istiod's webhooks, an injected pod and an invalid
	// Gateway its validation must deny; AdmissionFailures those the API
	// server refused or let through unchecked (a webhook the API server
	// could not call, e.g. a stale caBundle).
	Admissions        int64 `json:"admissions"`
	AdmissionFailures int64 `json:"admissionFailures"`
	// IssuanceFailuresByProxy is keyed by proxy ("ztunnel/node-1").
	IssuanceFailuresByProxy map[string]PairFailures `json:"issuanceFailuresByProxy"`
	// ByPairKind holds the counters per pair kind.
	ByPairKind map[string]KindCounts `json:"byPairKind"`
	// Restarts counts the proxy pods that terminated, by kind.
	Restarts map[string]int64 `json:"restarts"`
	// Events lists failures, refusals, resets and issuance failures in time
	// order: the newest MaxEvents; EventsDropped counts older ones left out.
	Events        []Event `json:"events"`
	EventsDropped int64   `json:"eventsDropped"`
	// Since is when counting started (creation or the last Reset).
	Since time.Time `json:"since"`
}

// NewProbe returns a Probe; Run starts it.
func NewProbe(opts ProbeOptions) (*Probe, error) {
	if opts.Endpoints == nil {
		return nil, errors.New("probe: an Endpoints function is required")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultProbeInterval
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultProbeTimeout
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultProbeConcurrency
	}
	if opts.MaxPerRound <= 0 {
		opts.MaxPerRound = DefaultProbeMaxPerRound
	}
	if opts.LongLived == 0 {
		opts.LongLived = DefaultLongLived
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.MaxEvents <= 0 {
		opts.MaxEvents = DefaultMaxEvents
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Probe{opts: opts, log: log.With("component", "probe"), long: map[*longConn]struct{}{}}
	p.Reset()
	return p, nil
}

// Run probes round after round until ctx ends, then closes its long-lived
// connections, waits for everything in flight and returns.
func (p *Probe) Run(ctx context.Context) {
	defer p.closeLong()
	for {
		p.Round(ctx)
		if !sleepCtx(ctx, p.opts.Interval, nil) {
			return
		}
	}
}

// Snapshot returns the counters.
func (p *Probe) Snapshot() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counts
	s := Snapshot{
		Handshakes: c.handshakes, Failures: c.failures, Refused: c.refused, Resets: c.resets,
		Connections: c.connections, IssuanceFailures: c.issuance, Skipped: p.skipped,
		Admissions: c.admissions, AdmissionFailures: c.admissionFailures,
		FailuresByPair: copyFailures(p.byPair), RefusedByPair: copyFailures(p.refusedBy),
		IssuanceFailuresByProxy: copyFailures(p.issuanceBy),
		ResetsByPair:            make(map[string]PairResets, len(p.resetsBy)),
		ByPairKind:              make(map[string]KindCounts, len(p.byKind)),
		Restarts:                make(map[string]int64, len(p.restarts)),
		Events:                  append([]Event{}, p.events...),
		EventsDropped:           p.dropped,
		Since:                   p.since,
	}
	for k, v := range p.resetsBy {
		r := *v
		r.ByReason = make(map[string]int64, len(v.ByReason))
		for reason, n := range v.ByReason {
			r.ByReason[reason] = n
		}
		s.ResetsByPair[k] = r
	}
	for k, v := range p.byKind {
		s.ByPairKind[k] = *v
	}
	for k, v := range p.restarts {
		s.Restarts[k] = v
	}
	return s
}

func copyFailures(m map[string]*PairFailures) map[string]PairFailures {
	out := make(map[string]PairFailures, len(m))
	for k, v := range m {
		out[k] = *v
	}
	return out
}

// Reset zeroes the counters and restarts Since; results of short
// connections begun before the reset are dropped. Long-lived connections
// stay open and count in the new window.
func (p *Probe) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.generation++
	p.since = p.opts.Now().UTC()
	p.counts, p.skipped, p.dropped = counts{}, 0, 0
	p.byPair = map[string]*PairFailures{}
	p.refusedBy = map[string]*PairFailures{}
	p.resetsBy = map[string]*PairResets{}
	p.issuanceBy = map[string]*PairFailures{}
	p.byKind = map[string]*KindCounts{}
	p.restarts = map[string]int64{}
	p.events = nil
}

// IssuanceFailed counts a failed CSR of proxy for identity. Wire it to the
// proxies' OnIssuanceFailure.
func (p *Probe) IssuanceFailed(proxy, identity string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts.issuance++
	reason := identity + ": " + err.Error()
	bump(p.issuanceBy, proxy, reason, p.opts.Now().UTC())
	p.eventLocked(Event{Type: EventIssuance, Proxy: proxy, Reason: reason})
}

// AdmissionChecked counts one admission check: err is nil when the API
// server admitted the object through istiod's webhook as it should.
func (p *Probe) AdmissionChecked(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts.admissions++
	if err != nil {
		p.counts.admissionFailures++
		p.eventLocked(Event{Type: EventAdmission, Reason: err.Error()})
	}
}

// ProxyTerminated counts a proxy pod of kind that went away (a restart or
// a deletion).
func (p *Probe) ProxyTerminated(kind Kind) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restarts[string(kind)]++
}

func bump(m map[string]*PairFailures, key, reason string, now time.Time) {
	f := m[key]
	if f == nil {
		f = &PairFailures{}
		m[key] = f
	}
	f.Count++
	f.LastReason = reason
	f.Last = now
}

func (p *Probe) kindLocked(kind string) *KindCounts {
	k := p.byKind[kind]
	if k == nil {
		k = &KindCounts{}
		p.byKind[kind] = k
	}
	return k
}

// eventLocked appends an event, keeping the newest MaxEvents. p.mu must be
// held.
func (p *Probe) eventLocked(e Event) {
	e.Time = p.opts.Now().UTC()
	if len(p.events) >= p.opts.MaxEvents {
		n := len(p.events) - p.opts.MaxEvents + 1
		p.events = append(p.events[:0], p.events[n:]...)
		p.dropped += int64(n)
	}
	p.events = append(p.events, e)
}

// probePair is one connection to make: from identity srcID of src to
// identity dstID of dst.
type probePair struct {
	src, dst     Endpoint
	srcID, dstID string
	kind         string
}

func (pp probePair) key() string { return pp.src.String() + " -> " + pp.dst.String() }

// Round makes one round of connections and returns when all are done; it
// also opens the long-lived connections that are missing.
func (p *Probe) Round(ctx context.Context) {
	eps := p.opts.Endpoints()
	p.topUpLong(ctx, eps)
	pairs := p.pairs(eps)
	if len(pairs) == 0 {
		return
	}
	p.mu.Lock()
	gen := p.generation
	p.mu.Unlock()
	work := make(chan probePair)
	var wg sync.WaitGroup
	for range min(p.opts.Concurrency, len(pairs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pp := range work {
				p.probe(ctx, gen, pp)
			}
		}()
	}
	for _, pp := range pairs {
		if ctx.Err() != nil {
			break
		}
		work <- pp
	}
	close(work)
	wg.Wait()
}

// allPairs lists every connection kind the mesh carries, with identities at
// random: each ztunnel to a ztunnel on another node and to a waypoint, each
// waypoint to a ztunnel, each gateway to each waypoint, each sidecar to
// another sidecar and to a waypoint — all within a cluster — and each
// ztunnel to a ztunnel and a waypoint of every other cluster (the east-west
// path, modelled as a direct mTLS connection between the proxies). Proxies
// that hold no identity take no part; a target without a live proxy does.
func allPairs(eps []Endpoint) []probePair {
	type group struct{ zs, ws, gs, ss []Endpoint }
	groups := map[string]*group{}
	var clusters []string
	for _, e := range eps {
		if e.Proxy != nil && len(e.Identities) == 0 {
			continue
		}
		g := groups[e.Cluster]
		if g == nil {
			g = &group{}
			groups[e.Cluster] = g
			clusters = append(clusters, e.Cluster)
		}
		switch e.Kind {
		case KindZtunnel:
			g.zs = append(g.zs, e)
		case KindWaypoint:
			g.ws = append(g.ws, e)
		case KindGateway:
			g.gs = append(g.gs, e)
		case KindSidecar:
			g.ss = append(g.ss, e)
		}
	}
	sort.Strings(clusters)
	pick := func(e Endpoint) string {
		if len(e.Identities) == 0 {
			return ""
		}
		return e.Identities[rand.IntN(len(e.Identities))]
	}
	var out []probePair
	add := func(src, dst Endpoint, cross bool) {
		kind := string(src.Kind) + "->" + string(dst.Kind)
		if cross {
			kind = "cross-cluster " + kind
		}
		out = append(out, probePair{src: src, dst: dst, srcID: pick(src), dstID: pick(dst), kind: kind})
	}
	one := func(es []Endpoint, not func(Endpoint) bool) (Endpoint, bool) {
		var c []Endpoint
		for _, e := range es {
			if not == nil || !not(e) {
				c = append(c, e)
			}
		}
		if len(c) == 0 {
			return Endpoint{}, false
		}
		return c[rand.IntN(len(c))], true
	}
	for _, cl := range clusters {
		g := groups[cl]
		for _, z := range g.zs {
			if o, ok := one(g.zs, func(o Endpoint) bool { return o.Node == z.Node }); ok {
				add(z, o, false)
			}
			if w, ok := one(g.ws, nil); ok {
				add(z, w, false)
			}
			for _, other := range clusters {
				if other == cl {
					continue
				}
				if o, ok := one(groups[other].zs, nil); ok {
					add(z, o, true)
				}
				if w, ok := one(groups[other].ws, nil); ok {
					add(z, w, true)
				}
			}
		}
		for _, w := range g.ws {
			if z, ok := one(g.zs, nil); ok {
				add(w, z, false)
			}
		}
		for _, gw := range g.gs {
			for _, w := range g.ws {
				add(gw, w, false)
			}
		}
		for _, s := range g.ss {
			if o, ok := one(g.ss, func(o Endpoint) bool { return o.target() == s.target() }); ok {
				add(s, o, false)
			}
			if w, ok := one(g.ws, nil); ok {
				add(s, w, false)
			}
		}
	}
	return out
}

// pairs chooses the round's short connections: allPairs, at most
// MaxPerRound of them, at random.
func (p *Probe) pairs(eps []Endpoint) []probePair {
	out := allPairs(eps)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if len(out) > p.opts.MaxPerRound {
		out = out[:p.opts.MaxPerRound]
	}
	return out
}

// probe makes one short connection and counts its outcome.
func (p *Probe) probe(ctx context.Context, gen int, pp probePair) {
	res := p.connect(ctx, pp, false)
	if ctx.Err() != nil {
		return // the probe is stopping: not a mesh failure
	}
	p.count(gen, pp, res, false)
}

// count records the outcome of a connection attempt; gen < 0 counts it
// whatever resets happened since.
func (p *Probe) count(gen int, pp probePair, res result, long bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen >= 0 && gen != p.generation {
		return
	}
	k := p.kindLocked(pp.kind)
	now := p.opts.Now().UTC()
	switch res.outcome {
	case outcomeSkipped:
		p.skipped++
		return
	case outcomeRefused:
		p.counts.refused++
		k.Refused++
		bump(p.refusedBy, pp.key(), res.reason, now)
		p.eventLocked(Event{Type: EventRefused, Pair: pp.key(), PairKind: pp.kind, Reason: res.reason})
		p.log.Debug("connection refused", "pair", pp.key(), "reason", res.reason)
		return
	case outcomeOK:
	case outcomeFailed:
		p.counts.failures++
		k.Failures++
		bump(p.byPair, pp.key(), res.reason, now)
		p.eventLocked(Event{Type: EventFailure, Pair: pp.key(), PairKind: pp.kind, Reason: res.reason})
		p.log.Debug("mTLS handshake failed", "pair", pp.key(), "reason", res.reason)
	}
	if res.handshake {
		p.counts.handshakes++
		k.Handshakes++
	}
	if long && res.outcome == outcomeOK {
		p.counts.connections++
		k.Connections++
	}
}

type outcome int

const (
	outcomeOK outcome = iota
	outcomeFailed
	outcomeSkipped
	outcomeRefused
)

// result is the outcome of one connection attempt. handshake tells whether
// a TLS handshake was attempted (a failure through a failed CSR is counted
// as a failure but not as a handshake); conn is the open connection of a
// long-lived attempt.
type result struct {
	outcome   outcome
	reason    string
	handshake bool
	conn      net.Conn
	raw       net.Conn
	// serverKey is the client address the server saw (see connect).
	serverKey string
}

func failed(reason string) result {
	return result{outcome: outcomeFailed, reason: reason, handshake: true}
}

// noCertificate judges a pair whose end holds no certificate for id: a
// failure when its CSR failed, a skip while it is still initializing.
func noCertificate(role string, e Endpoint, id string) result {
	if msg := e.Proxy.issuanceError(id); msg != "" {
		return result{outcome: outcomeFailed, reason: fmt.Sprintf("%s %s holds no certificate for %s: CSR failed: %s", role, e, id, msg)}
	}
	return result{outcome: outcomeSkipped}
}

// connect makes one connection; with keep, a successful one is returned
// open (a long-lived connection) instead of closed.
func (p *Probe) connect(ctx context.Context, pp probePair, keep bool) result {
	for _, e := range []Endpoint{pp.src, pp.dst} {
		if e.Proxy == nil {
			return result{outcome: outcomeRefused, reason: fmt.Sprintf("no live proxy for %s (restart gap)", e.target())}
		}
	}
	if !loopback(pp.dst.Address) {
		p.log.Warn("probe skips a non-loopback address", "endpoint", pp.dst.String(), "address", pp.dst.Address)
		return result{outcome: outcomeSkipped}
	}
	if _, _, ok := pp.dst.Proxy.credentials(pp.dstID); !ok {
		return noCertificate("server", pp.dst, pp.dstID)
	}
	cfg, ok := clientConfig(pp.src.Proxy, pp.srcID, pp.dstID, p.opts.Now)
	if !ok {
		return noCertificate("client", pp.src, pp.srcID)
	}
	stopped := func() bool { return pp.dst.Proxy.server().closed() || pp.src.Proxy.server().closed() }
	dctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	who := fmt.Sprintf("%s -> %s", pp.srcID, pp.dstID)
	var (
		c   mtlsClientConn
		err error
		// key is the client address the server saw: the probe's socket,
		// or the envoy stand-in's when it made the connection.
		key string
	)
	if via := outboundOf(pp.src.Proxy); via != "" {
		c, key, err = connectVia(dctx, via, pp.dst.Address, pp.dstID)
	} else {
		c, err = dialMTLS(dctx, pp.dst.Address, cfg)
		key = c.local
	}
	if err == nil {
		if keep {
			_ = c.raw.SetDeadline(time.Time{})
			return result{outcome: outcomeOK, handshake: true, conn: c.conn, raw: c.raw, serverKey: key}
		}
		_ = c.raw.Close()
		return result{outcome: outcomeOK, handshake: true}
	}
	if stopped() {
		// The proxy stopped between the round's listing and the attempt;
		// its target has another proxy by now or shows as refused in the
		// next round. A pod that stopped under the attempt is not a
		// certificate failure.
		return result{outcome: outcomeSkipped}
	}
	if srvReason, ok := pp.dst.Proxy.server().takeError(key); ok {
		return failed(who + ": " + srvReason)
	}
	return failed(who + ": " + err.Error())
}

// readLine reads one line byte by byte, so that nothing after it is
// buffered away from the connection.
func readLine(c net.Conn) (string, error) { return readLineMax(c, 64) }

// readLineMax is readLine for lines of up to n bytes.
func readLineMax(c net.Conn, n int) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < n {
		if _, err := c.Read(one); err != nil {
			return string(b), err
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b), nil
		}
	}
	return string(b), errors.New("line too long")
}

// loopback reports whether addr is a loopback IP address with a port: the
// only addresses the probe dials.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
