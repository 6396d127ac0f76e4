package mesh

import (
	"context"
	"math/rand/v2"
	"net"
	"time"
)

// longConn is one long-lived connection of the Probe: opened like a short
// one, then kept open with a ping every PingInterval until the Probe stops or
// the connection ends on its own (a reset).
type longConn struct {
	pp   probePair
	conn net.Conn
	raw  net.Conn
	// serverKey is the client address the server saw.
	serverKey string
	untrack   func()
	cancel    context.CancelFunc
}

// topUpLong opens, for every pair kind of eps, the long-lived connections
// missing to reach LongLived. Attempts are counted like short handshakes;
// an attempt that cannot run now (an end initializing) is retried next
// round.
func (p *Probe) topUpLong(ctx context.Context, eps []Endpoint) {
	if p.opts.LongLived < 0 || ctx.Err() != nil {
		return
	}
	byKind := map[string][]probePair{}
	for _, pp := range allPairs(eps) {
		byKind[pp.kind] = append(byKind[pp.kind], pp)
	}
	p.longMu.Lock()
	open := map[string]int{}
	for lc := range p.long {
		open[lc.pp.kind]++
	}
	p.longMu.Unlock()
	for kind, candidates := range byKind {
		for i := open[kind]; i < p.opts.LongLived; i++ {
			pp := candidates[rand.IntN(len(candidates))]
			p.openLong(ctx, pp)
		}
	}
}

// openLong opens one long-lived connection for pp and starts its pinger.
func (p *Probe) openLong(ctx context.Context, pp probePair) {
	res := p.connect(ctx, pp, true)
	if ctx.Err() != nil {
		if res.raw != nil {
			_ = res.raw.Close()
		}
		return
	}
	p.count(-1, pp, res, true)
	if res.conn == nil {
		return
	}
	// The connection ends with the proxy that originated it, as a real
	// application connection through a terminating proxy does.
	untrack, ok := pp.src.Proxy.server().trackOutbound(res.raw)
	if !ok {
		_ = res.raw.Close()
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	lc := &longConn{pp: pp, conn: res.conn, raw: res.raw, serverKey: res.serverKey, untrack: untrack, cancel: cancel}
	p.longMu.Lock()
	p.long[lc] = struct{}{}
	p.longWG.Add(1)
	p.longMu.Unlock()
	go p.ping(lctx, lc)
}

// ping keeps lc alive until ctx ends (the Probe stops: not a reset) or the
// connection fails (a reset, counted with its reason).
func (p *Probe) ping(ctx context.Context, lc *longConn) {
	defer p.longWG.Done()
	defer func() {
		lc.cancel()
		lc.untrack()
		_ = lc.raw.Close()
		p.longMu.Lock()
		delete(p.long, lc)
		p.longMu.Unlock()
	}()
	for {
		if !sleepCtx(ctx, p.opts.PingInterval, nil) {
			return
		}
		_ = lc.raw.SetDeadline(time.Now().Add(p.opts.Timeout))
		_, err := lc.conn.Write([]byte(pingMsg))
		var line string
		if err == nil {
			line, err = readLine(lc.conn)
		}
		if err == nil && line == pongMsg {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		p.reset(lc, err)
		return
	}
}

// reset counts the end of a long-lived connection with the best reason
// known: what the originating or the accepting proxy recorded when it ended
// the connection (drain deadline, pod deleted), else the error seen.
func (p *Probe) reset(lc *longConn, err error) {
	local := lc.raw.LocalAddr().String()
	reason := ""
	if r, ok := lc.pp.src.Proxy.server().endReason(local); ok {
		reason = "client side: " + r
	} else if r, ok := lc.pp.dst.Proxy.server().endReason(lc.serverKey); ok {
		reason = "server side: " + r
	} else if err != nil {
		reason = "connection error: " + err.Error()
	} else {
		reason = "unexpected reply"
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := lc.pp.key()
	p.counts.resets++
	p.kindLocked(lc.pp.kind).Resets++
	r := p.resetsBy[key]
	if r == nil {
		r = &PairResets{ByReason: map[string]int64{}}
		p.resetsBy[key] = r
	}
	r.Count++
	r.ByReason[reason]++
	r.LastReason = reason
	r.Last = p.opts.Now().UTC()
	p.eventLocked(Event{Type: EventReset, Pair: key, PairKind: lc.pp.kind, Reason: reason})
	p.log.Debug("long-lived connection reset", "pair", key, "reason", reason)
}

// closeLong ends every long-lived connection (the Probe stops; these are
// not resets) and waits for their pingers.
func (p *Probe) closeLong() {
	p.longMu.Lock()
	for lc := range p.long {
		lc.cancel()
	}
	p.longMu.Unlock()
	p.longWG.Wait()
}
