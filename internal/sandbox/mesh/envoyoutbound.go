package mesh

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// An envoy pod also originates connections (gateway→waypoint,
// waypoint→ztunnel, sidecar→sidecar). Envoy does that with its own client
// certificate and trust; so does the stand-in, on an outbound listener
// that plays envoy's outbound capture: the probe connects in plain text
// and names where to go, and the stand-in makes the mTLS connection itself,
// with the "default" and "ROOTCA" SDS last gave it.
//
// The exchange, one line each way, then the connection's bytes spliced:
//
//	probe:     CONNECT <address> <expected server SPIFFE ID>\n
//	stand-in:  ok <local address of its upstream socket>\n
//	       or: fail <local address of its upstream socket, or -> <reason>\n
//
// The upstream socket's address is what the server saw as its client: the
// probe asks the server for its verdict under that key.

// EnvStubOutbound is the env naming the stand-in's outbound listener
// address (127.0.0.1:0 for any port, reported in the event log).
const EnvStubOutbound = "MESHCA_ENVOYSTUB_OUTBOUND"

// maxOutboundLine bounds a line of the outbound exchange.
const maxOutboundLine = 4096

// EnvoyOutboundOptions configures an envoy stand-in's outbound listener.
type EnvoyOutboundOptions struct {
	// Name labels the listener in logs.
	Name string
	// Addr is where to listen, 127.0.0.1:port.
	Addr string
	// Credentials returns "default" and "ROOTCA" as SDS gave them.
	Credentials func() (cert *Certificate, roots []*x509.Certificate, ok bool)
	// Events receives the listener's address and the end of every
	// connection the stand-in closes itself (its own exit); nil for none.
	Events *EnvoyInbound
	Now    func() time.Time
	Logger *slog.Logger
}

// EnvoyOutbound is an envoy stand-in's outbound listener.
type EnvoyOutbound struct {
	opts EnvoyOutboundOptions
	ln   net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
	// cxTotal and cxActive count the probe's connections to the listener.
	cxTotal, cxActive uint64
}

// Stats returns the listener's connection counters.
func (o *EnvoyOutbound) Stats() ListenerStats {
	o.mu.Lock()
	defer o.mu.Unlock()
	return ListenerStats{DownstreamCxTotal: o.cxTotal, DownstreamCxActive: o.cxActive}
}

// StartEnvoyOutbound opens the listener.
func StartEnvoyOutbound(opts EnvoyOutboundOptions) (*EnvoyOutbound, error) {
	if opts.Addr == "" || opts.Credentials == nil {
		return nil, errors.New("envoy outbound listener: address and credentials are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s: outbound listener: %w", opts.Name, err)
	}
	o := &EnvoyOutbound{opts: opts, ln: ln, conns: map[net.Conn]struct{}{}}
	if opts.Events != nil {
		opts.Events.log.write(StubEvent{Event: EventOutboundStarted, Addr: o.Addr()})
	}
	o.wg.Add(1)
	go o.serve()
	return o, nil
}

// Addr is the listener's address.
func (o *EnvoyOutbound) Addr() string { return o.ln.Addr().String() }

func (o *EnvoyOutbound) serve() {
	defer o.wg.Done()
	for {
		c, err := o.ln.Accept()
		if err != nil {
			return
		}
		if !o.track(c) {
			_ = c.Close()
			return
		}
		o.mu.Lock()
		o.cxTotal++
		o.cxActive++
		o.mu.Unlock()
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			defer func() {
				o.untrack(c)
				o.mu.Lock()
				o.cxActive--
				o.mu.Unlock()
			}()
			o.handle(c)
		}()
	}
}

func (o *EnvoyOutbound) track(c net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return false
	}
	o.conns[c] = struct{}{}
	return true
}

func (o *EnvoyOutbound) untrack(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.conns, c)
}

// handle serves one CONNECT.
func (o *EnvoyOutbound) handle(down net.Conn) {
	defer func() { _ = down.Close() }()
	_ = down.SetDeadline(time.Now().Add(connDeadline))
	br := bufio.NewReaderSize(down, maxOutboundLine)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	addr, dst, ok := parseConnect(line)
	if !ok {
		_, _ = fmt.Fprintf(down, "fail - bad request %q\n", strings.TrimSpace(line))
		return
	}
	cert, roots, ok := o.opts.Credentials()
	if !ok {
		_, _ = fmt.Fprintf(down, "fail - %s holds no certificate yet\n", o.opts.Name)
		return
	}
	src := cert.Identity.String()
	cfg := clientTLS(cert, roots, src, dst, o.opts.Now)
	ctx, cancel := context.WithTimeout(context.Background(), connDeadline)
	defer cancel()
	up, err := dialMTLS(ctx, addr, cfg)
	if err != nil {
		_, _ = fmt.Fprintf(down, "fail %s %s\n", up.local, oneLine(err.Error()))
		return
	}
	defer func() { _ = up.raw.Close() }()
	if !o.track(up.raw) {
		return
	}
	defer o.untrack(up.raw)
	if _, err := fmt.Fprintf(down, "ok %s\n", up.local); err != nil {
		return
	}
	_ = down.SetDeadline(time.Time{})
	_ = up.raw.SetDeadline(time.Time{})
	// Splice until either side ends; the end of one ends the other.
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up.conn, br); _ = up.raw.Close(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(down, up.conn); _ = down.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// Close ends every connection and the listener. The inbound listener's
// Close records the ends (it holds the event log).
func (o *EnvoyOutbound) Close(reason string) {
	o.mu.Lock()
	o.done = true
	for c := range o.conns {
		if o.opts.Events != nil && c.LocalAddr().String() == o.Addr() {
			o.opts.Events.log.write(StubEvent{Event: EventEnded, Client: c.RemoteAddr().String(), Reason: reason})
		}
		_ = c.Close()
	}
	o.mu.Unlock()
	_ = o.ln.Close()
	o.wg.Wait()
}

func parseConnect(line string) (addr, dst string, ok bool) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "CONNECT" || !loopback(f[1]) || !strings.HasPrefix(f[2], "spiffe://") {
		return "", "", false
	}
	return f[1], f[2], true
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// mtlsClientConn is an established client connection of the probe's
// protocol, or, on failure, the local address it had.
type mtlsClientConn struct {
	raw   net.Conn
	conn  net.Conn
	local string
}

// dialMTLS dials addr, completes the TLS handshake with cfg and reads the
// server's "ok". In TLS 1.3 the server judges the client certificate after
// the client has finished: its verdict arrives with the first read.
func dialMTLS(ctx context.Context, addr string, cfg *tls.Config) (mtlsClientConn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return mtlsClientConn{local: "-"}, fmt.Errorf("dial %s: %w", addr, err)
	}
	res := mtlsClientConn{raw: raw, local: raw.LocalAddr().String()}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	tc := tls.Client(raw, cfg)
	err = tc.HandshakeContext(ctx)
	if err == nil {
		var line string
		line, err = readLine(tc)
		if err == nil && line != "ok\n" {
			err = fmt.Errorf("unexpected server reply %q", line)
		}
	}
	if err != nil {
		_ = raw.Close()
		return res, err
	}
	res.conn = tc
	return res, nil
}

// outboundVia is a Proxy whose own process originates its connections: the
// probe asks it through its outbound listener.
type outboundVia interface {
	outboundAddr() string
}

// outboundOf is p's outbound listener, empty when the probe connects as p
// itself.
func outboundOf(p Proxy) string {
	if o, ok := p.(outboundVia); ok {
		return o.outboundAddr()
	}
	return ""
}

// connectVia asks the envoy stand-in listening at via to connect to addr,
// expecting dst. It returns the plain connection to the stand-in (spliced
// to the mTLS connection) and the key under which the server knows the
// stand-in's socket.
func connectVia(ctx context.Context, via, addr, dst string) (mtlsClientConn, string, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", via)
	if err != nil {
		return mtlsClientConn{local: "-"}, "-", fmt.Errorf("dial the envoy's outbound listener %s: %w", via, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	res := mtlsClientConn{raw: raw, local: raw.LocalAddr().String()}
	if _, err := fmt.Fprintf(raw, "CONNECT %s %s\n", addr, dst); err != nil {
		_ = raw.Close()
		return res, "-", fmt.Errorf("envoy outbound listener %s: %w", via, err)
	}
	line, err := readLineMax(raw, maxOutboundLine)
	if err != nil {
		_ = raw.Close()
		return res, "-", fmt.Errorf("envoy outbound listener %s: %w", via, err)
	}
	verdict, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	key, reason, _ := strings.Cut(rest, " ")
	if verdict == "ok" {
		res.conn = raw
		return res, key, nil
	}
	_ = raw.Close()
	if verdict != "fail" {
		reason = fmt.Sprintf("envoy outbound listener %s: unexpected reply %q", via, line)
	}
	return res, key, errors.New(reason)
}
