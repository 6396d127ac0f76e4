package mesh

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Probe defaults.
const (
	DefaultProbeInterval    = 50 * time.Millisecond
	DefaultProbeTimeout     = 2 * time.Second
	DefaultProbeConcurrency = 4
	DefaultProbeMaxPerRound = 32
)

// ProbeOptions configures a Probe.
type ProbeOptions struct {
	// Endpoints returns the live proxies; called once per round. Required.
	Endpoints func() []Endpoint
	// Interval is the pause between rounds; DefaultProbeInterval when zero.
	Interval time.Duration
	// Timeout bounds one connection (dial, handshake and the server's
	// reply); DefaultProbeTimeout when zero.
	Timeout time.Duration
	// Concurrency is the number of handshakes in flight;
	// DefaultProbeConcurrency when zero.
	Concurrency int
	// MaxPerRound caps the handshakes of one round (chosen at random among
	// the round's pairs); DefaultProbeMaxPerRound when zero.
	MaxPerRound int
	// Now is the clock of Since and of failure times; time.Now when nil.
	Now func() time.Time
	// Logger receives failures at debug level; slog.Default() when nil.
	Logger *slog.Logger
}

// Probe continuously opens real TLS 1.3 mutual-TLS connections between the
// simulated proxies — ztunnel to ztunnel across nodes, ztunnel to waypoint
// and back, gateway to waypoint — with each side's current certificate and
// roots, and counts handshakes and failures per pair.
type Probe struct {
	opts ProbeOptions
	log  *slog.Logger

	mu         sync.Mutex
	generation int
	since      time.Time
	handshakes int64
	failures   int64
	skipped    int64
	byPair     map[string]*PairFailures
}

// PairFailures counts the failed handshakes of one ordered pair of proxies.
type PairFailures struct {
	Count      int64     `json:"count"`
	LastReason string    `json:"lastReason"`
	Last       time.Time `json:"last"`
}

// Snapshot is the Probe's counters. Its JSON is
// {"handshakes": N, "failures": M, "skipped": S, "failuresByPair": {...}, "since": "<RFC 3339>"}.
type Snapshot struct {
	// Handshakes counts attempted connections, failed ones included.
	Handshakes int64 `json:"handshakes"`
	// Failures counts failed connections.
	Failures int64 `json:"failures"`
	// Skipped counts pairs not attempted because an end held no certificate
	// yet, had no loopback address, or stopped during the attempt.
	Skipped int64 `json:"skipped"`
	// FailuresByPair is keyed "ztunnel/node-1 -> waypoint/ns/waypoint-xyz".
	FailuresByPair map[string]PairFailures `json:"failuresByPair"`
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
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Probe{opts: opts, log: log.With("component", "probe")}
	p.Reset()
	return p, nil
}

// Run probes round after round until ctx ends, then waits for the
// connections in flight and returns.
func (p *Probe) Run(ctx context.Context) {
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
	s := Snapshot{
		Handshakes: p.handshakes, Failures: p.failures, Skipped: p.skipped,
		FailuresByPair: make(map[string]PairFailures, len(p.byPair)), Since: p.since,
	}
	for k, v := range p.byPair {
		s.FailuresByPair[k] = *v
	}
	return s
}

// Reset zeroes the counters and restarts Since; results of connections
// begun before the reset are dropped.
func (p *Probe) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.generation++
	p.since = p.opts.Now().UTC()
	p.handshakes, p.failures, p.skipped = 0, 0, 0
	p.byPair = map[string]*PairFailures{}
}

// probePair is one connection to make: from identity srcID of src to
// identity dstID of dst.
type probePair struct {
	src, dst     Endpoint
	srcID, dstID string
}

func (pp probePair) key() string { return pp.src.String() + " -> " + pp.dst.String() }

// Round makes one round of connections and returns when all are done.
func (p *Probe) Round(ctx context.Context) {
	pairs := p.pairs(p.opts.Endpoints())
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

// pairs chooses the round's connections: each ztunnel to a ztunnel on
// another node, each ztunnel to a waypoint and each waypoint to a ztunnel,
// each gateway to each waypoint; identities at random; at most MaxPerRound
// of them, at random. Proxies without identities take no part.
func (p *Probe) pairs(eps []Endpoint) []probePair {
	var zs, ws, gs []Endpoint
	for _, e := range eps {
		if len(e.Identities) == 0 || e.Proxy == nil {
			continue
		}
		switch e.Kind {
		case KindZtunnel:
			zs = append(zs, e)
		case KindWaypoint:
			ws = append(ws, e)
		case KindGateway:
			gs = append(gs, e)
		}
	}
	pick := func(e Endpoint) string { return e.Identities[rand.IntN(len(e.Identities))] }
	add := func(out []probePair, src, dst Endpoint) []probePair {
		return append(out, probePair{src: src, dst: dst, srcID: pick(src), dstID: pick(dst)})
	}
	var out []probePair
	for _, z := range zs {
		var others []Endpoint
		for _, o := range zs {
			if o.Node != z.Node {
				others = append(others, o)
			}
		}
		if len(others) > 0 {
			out = add(out, z, others[rand.IntN(len(others))])
		}
		if len(ws) > 0 {
			out = add(out, z, ws[rand.IntN(len(ws))])
		}
	}
	if len(zs) > 0 {
		for _, w := range ws {
			out = add(out, w, zs[rand.IntN(len(zs))])
		}
	}
	for _, g := range gs {
		for _, w := range ws {
			out = add(out, g, w)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if len(out) > p.opts.MaxPerRound {
		out = out[:p.opts.MaxPerRound]
	}
	return out
}

// probe makes one connection and counts its outcome.
func (p *Probe) probe(ctx context.Context, gen int, pp probePair) {
	outcome, reason := p.connect(ctx, pp)
	if ctx.Err() != nil {
		return // the probe is stopping: not a mesh failure
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen != p.generation {
		return
	}
	switch outcome {
	case outcomeSkipped:
		p.skipped++
	case outcomeOK:
		p.handshakes++
	case outcomeFailed:
		p.handshakes++
		p.failures++
		key := pp.key()
		f := p.byPair[key]
		if f == nil {
			f = &PairFailures{}
			p.byPair[key] = f
		}
		f.Count++
		f.LastReason = reason
		f.Last = p.opts.Now().UTC()
		p.log.Debug("mTLS handshake failed", "pair", key, "reason", reason)
	}
}

type outcome int

const (
	outcomeOK outcome = iota
	outcomeFailed
	outcomeSkipped
)

func (p *Probe) connect(ctx context.Context, pp probePair) (outcome, string) {
	if !loopback(pp.dst.Address) {
		p.log.Warn("probe skips a non-loopback address", "endpoint", pp.dst.String(), "address", pp.dst.Address)
		return outcomeSkipped, ""
	}
	if pp.dst.Proxy.server().closed() || pp.src.Proxy.server().closed() {
		return outcomeSkipped, ""
	}
	if _, _, ok := pp.dst.Proxy.credentials(pp.dstID); !ok {
		return outcomeSkipped, ""
	}
	cfg, ok := clientConfig(pp.src.Proxy, pp.srcID, pp.dstID, p.opts.Now)
	if !ok {
		return outcomeSkipped, ""
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	who := fmt.Sprintf("%s -> %s", pp.srcID, pp.dstID)
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", pp.dst.Address)
	if err != nil {
		if pp.dst.Proxy.server().closed() || pp.src.Proxy.server().closed() {
			// The listener closed under the dial: a pod going away.
			return outcomeSkipped, ""
		}
		return outcomeFailed, fmt.Sprintf("%s: dial %s: %v", who, pp.dst.Address, err)
	}
	defer func() { _ = raw.Close() }()
	local := raw.LocalAddr().String()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn := tls.Client(raw, cfg)
	err = conn.HandshakeContext(ctx)
	if err == nil {
		// In TLS 1.3 the server judges the client certificate after the
		// client has finished: its verdict arrives with the first read.
		var line string
		line, err = bufio.NewReader(conn).ReadString('\n')
		if err == nil && line != "ok\n" {
			err = fmt.Errorf("unexpected server reply %q", line)
		}
	}
	if err == nil {
		return outcomeOK, ""
	}
	if pp.dst.Proxy.server().closed() || pp.src.Proxy.server().closed() {
		// A pod going away (a rollout restart) is not a certificate failure.
		return outcomeSkipped, ""
	}
	if srvReason, ok := pp.dst.Proxy.server().takeError(local); ok {
		return outcomeFailed, who + ": " + srvReason
	}
	return outcomeFailed, who + ": " + err.Error()
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
