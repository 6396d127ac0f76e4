package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The envoy stand-in's listener runs in another process than the probe:
// its verdicts reach the probe only through its event log. This checks the
// three the probe reads (a rejected client, a drain, a connection the
// stand-in ended) on a listener serving a simulated agent's credentials.
func TestEnvoyInboundReportsItsVerdictsThroughTheEventLog(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiodA, istiodB := newFakeIstiod(t, a), newFakeIstiod(t, b)
	server := startAgent(t, AgentOptions{Pod: "waypoint-a", CA: istiodA.client(), TrustPEM: a.rootPEM, Identity: ident("waypoint")})
	trusted := startAgent(t, AgentOptions{Pod: "client-a", CA: istiodA.client(), TrustPEM: a.rootPEM, Identity: ident("client-a")})
	// The stranger's istiod hands out both roots, so that only the server
	// has a reason to refuse.
	istiodB.set(b.inter, b.chainPEM, concat(b.rootPEM, a.rootPEM))
	stranger := startAgent(t, AgentOptions{Pod: "client-b", CA: istiodB.client(), TrustPEM: concat(b.rootPEM, a.rootPEM), Identity: ident("client-b")})
	eventually(t, 20*time.Second, "the three agents hold certificates", func() bool {
		return server.Ready() && trusted.Ready() && stranger.Ready()
	})
	path := filepath.Join(t.TempDir(), "events.jsonl")
	in, err := StartEnvoyInbound(EnvoyInboundOptions{
		Name: "envoy waypoint-a", Addr: "127.0.0.1:0", EventLog: path, Logger: testLogger(t),
		Credentials: func() (*Certificate, []*x509.Certificate, bool) { return server.credentials("") },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close("test over") })
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("event log: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}
	r := newEventReader(path)
	if addr, pid, ok := r.listener(); !ok || addr != in.Addr() || pid != os.Getpid() {
		t.Fatalf("started event: %q %d %v, want %q %d", addr, pid, ok, in.Addr(), os.Getpid())
	}

	dial := func(p Proxy, src string) (net.Conn, *tls.Conn, error) {
		cfg, ok := clientConfig(p, src, ident("waypoint").String(), time.Now)
		if !ok {
			t.Fatalf("%s holds no certificate", src)
		}
		raw, err := net.Dial("tcp", in.Addr())
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, cfg)
		_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.HandshakeContext(context.Background()); err != nil {
			return raw, tc, err
		}
		line, err := readLine(tc)
		if err == nil && line != "ok\n" {
			t.Fatalf("reply %q", line)
		}
		return raw, tc, err
	}

	// A client under another root: refused, and the reason is in the log
	// by the time the client sees the alert.
	raw, _, err := dial(stranger, ident("client-b").String())
	if err == nil {
		t.Fatal("a client under an unrelated root was accepted")
	}
	reason, ok := r.take(true, raw.LocalAddr().String())
	if !ok || !strings.Contains(reason, "rejected the client certificate") || !strings.Contains(reason, "unknown authority") {
		t.Fatalf("rejection reason %q (found %v)", reason, ok)
	}
	if _, ok := r.take(true, raw.LocalAddr().String()); ok {
		t.Fatal("a rejection reason was returned twice")
	}
	_ = raw.Close()

	// A trusted client is served, and stays open through the drain.
	raw, tc, err := dial(trusted, ident("client-a").String())
	if err != nil {
		t.Fatalf("trusted client: %v", err)
	}
	if !r.drainedAt().IsZero() {
		t.Fatal("drained before any drain")
	}
	in.Drain()
	if r.drainedAt().IsZero() {
		t.Fatal("the drain is not in the log")
	}
	if _, err := tc.Write([]byte(pingMsg)); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(tc); err != nil || line != pongMsg {
		t.Fatalf("a draining listener stopped serving a held connection: %q %v", line, err)
	}
	in.Close("envoy waypoint-a exited on a signal")
	if reason, ok := r.take(false, raw.LocalAddr().String()); !ok || reason != "envoy waypoint-a exited on a signal" {
		t.Fatalf("end reason %q (found %v)", reason, ok)
	}
	st := in.Stats()
	if st.DownstreamCxTotal != 2 || st.SSLHandshake != 1 || st.SSLFailVerify != 1 || st.DownstreamCxActive != 0 {
		t.Fatalf("listener stats %+v, want 2 connections, 1 handshake, 1 verify failure, none active", st)
	}
}

// The stand-in's outbound listener makes the connections an envoy pod
// originates, with its own credentials: the probe learns the address the
// server saw, so the server's verdict can be read under it, and the
// connection it splices carries the probe's pings.
func TestEnvoyOutboundConnectsWithTheStandInsCredentials(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiodA, istiodB := newFakeIstiod(t, a), newFakeIstiod(t, b)
	istiodB.set(b.inter, b.chainPEM, concat(b.rootPEM, a.rootPEM))
	server := startAgent(t, AgentOptions{Pod: "waypoint-a", CA: istiodA.client(), TrustPEM: a.rootPEM, Identity: ident("waypoint")})
	trusted := startAgent(t, AgentOptions{Pod: "client-a", CA: istiodA.client(), TrustPEM: a.rootPEM, Identity: ident("client-a")})
	stranger := startAgent(t, AgentOptions{Pod: "client-b", CA: istiodB.client(), TrustPEM: concat(b.rootPEM, a.rootPEM), Identity: ident("client-b")})
	eventually(t, 20*time.Second, "the three agents hold certificates", func() bool {
		return server.Ready() && trusted.Ready() && stranger.Ready()
	})
	dir := t.TempDir()
	in, err := StartEnvoyInbound(EnvoyInboundOptions{
		Name: "envoy waypoint-a", Addr: "127.0.0.1:0", EventLog: filepath.Join(dir, "server.jsonl"), Logger: testLogger(t),
		Credentials: func() (*Certificate, []*x509.Certificate, bool) { return server.credentials("") },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close("test over") })
	serverLog := newEventReader(filepath.Join(dir, "server.jsonl"))
	outbound := func(name string, p *Agent) (*EnvoyOutbound, *eventReader) {
		log := filepath.Join(dir, name+".jsonl")
		ev, err := StartEnvoyInbound(EnvoyInboundOptions{Name: "envoy " + name, Addr: "127.0.0.1:0", EventLog: log, Logger: testLogger(t),
			Credentials: func() (*Certificate, []*x509.Certificate, bool) { return p.credentials("") }})
		if err != nil {
			t.Fatal(err)
		}
		out, err := StartEnvoyOutbound(EnvoyOutboundOptions{Name: "envoy " + name, Addr: "127.0.0.1:0", Events: ev, Logger: testLogger(t),
			Credentials: func() (*Certificate, []*x509.Certificate, bool) { return p.credentials("") }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { out.Close("test over"); ev.Close("test over") })
		return out, newEventReader(log)
	}
	ctx := context.Background()

	// Refused by the server: the reason is the server's, under the
	// stand-in's socket address.
	out, _ := outbound("client-b", stranger)
	_, key, err := connectVia(ctx, out.Addr(), in.Addr(), ident("waypoint").String())
	if err == nil {
		t.Fatal("a client under an unrelated root was accepted")
	}
	if reason, ok := serverLog.take(true, key); !ok || !strings.Contains(reason, "rejected the client certificate") {
		t.Fatalf("server verdict under %q: %q (found %v); client error %v", key, reason, ok, err)
	}

	// Accepted: pings go through, and the stand-in's exit is recorded
	// against the probe's side of the connection.
	out, clientLog := outbound("client-a", trusted)
	if got := clientLog.outboundListener(); got != out.Addr() {
		t.Fatalf("outbound listener in the log %q, want %q", got, out.Addr())
	}
	c, key, err := connectVia(ctx, out.Addr(), in.Addr(), ident("waypoint").String())
	if err != nil {
		t.Fatalf("trusted client: %v", err)
	}
	if key == "" || key == c.local {
		t.Fatalf("server key %q: want the stand-in's upstream address, not the probe's %q", key, c.local)
	}
	_ = c.raw.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write([]byte(pingMsg)); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(c.conn); err != nil || line != pongMsg {
		t.Fatalf("ping through the stand-in: %q %v", line, err)
	}
	out.Close("envoy client-a exited on a signal")
	if reason, ok := clientLog.take(false, c.local); !ok || reason != "envoy client-a exited on a signal" {
		t.Fatalf("end reason %q (found %v)", reason, ok)
	}
}
