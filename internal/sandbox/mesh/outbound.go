package mesh

import (
	"net"
	"sync"
)

// outboundConns are the long-lived connections a proxy originated (the
// Probe registers them): they end with the proxy, as a real application
// connection through a terminating proxy does, and the reason is kept for
// the Probe by the connection's local address.
type outboundConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	ends  map[string]string
	// closed: the proxy is terminating and takes no new connection.
	closed bool
}

// track registers c; the returned function unregisters it. It reports
// false, registering nothing, once the proxy is terminating.
func (o *outboundConns) track(c net.Conn) (untrack func(), ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, false
	}
	if o.conns == nil {
		o.conns = map[net.Conn]struct{}{}
	}
	o.conns[c] = struct{}{}
	return func() {
		o.mu.Lock()
		delete(o.conns, c)
		o.mu.Unlock()
	}, true
}

// close refuses new connections from now on.
func (o *outboundConns) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
}

// endAll ends every registered connection, keeping reason for each unless
// an earlier end gave one (a drain deadline, not the stop after it), and
// refuses new ones.
func (o *outboundConns) endAll(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	if o.ends == nil || len(o.ends) >= maxRecordedErrors {
		o.ends = map[string]string{}
	}
	for c := range o.conns {
		if _, ok := o.ends[c.LocalAddr().String()]; !ok {
			o.ends[c.LocalAddr().String()] = reason
		}
		_ = c.Close()
	}
	clear(o.conns)
}

// take returns and forgets why the connection with local address local
// ended.
func (o *outboundConns) take(local string) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.ends[local]
	delete(o.ends, local)
	return r, ok
}
