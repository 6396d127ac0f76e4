package mesh

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Kind is the kind of a simulated proxy.
type Kind string

// The proxy kinds of an ambient mesh.
const (
	KindZtunnel  Kind = "ztunnel"
	KindWaypoint Kind = "waypoint"
	KindGateway  Kind = "gateway"
	KindSidecar  Kind = "sidecar"
)

// Endpoint is one live proxy as the Probe sees it.
type Endpoint struct {
	Kind Kind
	// Name is the node for a ztunnel and "<namespace>/<pod>" for an envoy
	// proxy.
	Name string
	// Node is the node the proxy runs on.
	Node string
	// Identities are the SPIFFE IDs the proxy holds (or is obtaining)
	// certificates for.
	Identities []string
	// Address is the proxy's mTLS listener, 127.0.0.1:port.
	Address string
	// Proxy is the simulated proxy itself: a *Ztunnel or an *Agent. Nil
	// when the Target has no live proxy at all (a restart gap): connections
	// to it are refused.
	Proxy Proxy
	// Target is the logical destination the proxy serves, which outlives
	// pod restarts: "ztunnel/<node>" or "<kind>/<namespace>/<workload>",
	// prefixed with the cluster in a multi-cluster sandbox. Empty means
	// the proxy's own String().
	Target string
	// Cluster names the proxy's cluster in a multi-cluster sandbox; empty
	// in a single cluster.
	Cluster string
}

// target is the logical destination of e.
func (e Endpoint) target() string {
	if e.Target != "" {
		return e.Target
	}
	return e.String()
}

// String names the endpoint as failures are keyed: "ztunnel/node-1",
// "waypoint/ns/waypoint-xyz".
func (e Endpoint) String() string {
	if e.Cluster != "" {
		return string(e.Kind) + "/" + e.Cluster + "/" + e.Name
	}
	return string(e.Kind) + "/" + e.Name
}

// Proxy is a simulated proxy that takes part in probe traffic: *Ztunnel and
// *Agent.
type Proxy interface {
	// Endpoint describes the proxy's current state for the Probe.
	Endpoint() Endpoint
	// credentials returns the current certificate and trusted roots of
	// identity ("" for the proxy's only identity); ok is false while the
	// proxy holds no certificate for it.
	credentials(identity string) (cert *Certificate, roots []*x509.Certificate, ok bool)
	// server is the server side of the proxy's data path: where its
	// listener's verdicts and the ends of its connections are read.
	server() serverSide
	// issuanceError is the reason the proxy holds no certificate for
	// identity because its CSR failed; empty while it simply has not got
	// one yet (Initializing) or when it holds one.
	issuanceError(identity string) string
	// Ready reports whether the proxy holds a certificate for each of its
	// identities: the moment a real proxy pod turns Ready and takes over
	// new connections.
	Ready() bool
	// Drain starts the proxy's termination: it keeps serving the
	// connections it holds for after, then ends them and stops.
	Drain(after time.Duration, reason string)
}

// serverSide is what the Probe reads from the proxy that accepts (or
// originates) a connection: an in-process mtlsServer, or the record an
// envoy stand-in process keeps of its own listener (AgentProxy).
type serverSide interface {
	// closed reports whether the proxy has stopped.
	closed() bool
	// takeError returns and forgets the rejection reason recorded for the
	// client at remote.
	takeError(remote string) (string, bool)
	// endReason returns and forgets why the proxy ended the connection
	// whose client address is local.
	endReason(local string) (string, bool)
	// trackOutbound registers a long-lived connection the proxy
	// originated, so that it ends with the proxy.
	trackOutbound(c net.Conn) (untrack func(), ok bool)
}

// sniFor is the SNI a client sends to ask a ztunnel for the certificate of
// identity: a DNS-safe token derived from the SPIFFE ID.
func sniFor(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return hex.EncodeToString(sum[:12]) + ".id.mesh.invalid"
}

// verifyPeer verifies a presented chain against roots at now, and that the
// leaf carries the SPIFFE URI want (any SPIFFE URI when want is empty).
func verifyPeer(raw [][]byte, roots []*x509.Certificate, now time.Time, want string) error {
	if len(raw) == 0 {
		return errors.New("peer presented no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("peer certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	leaf := certs[0]
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("peer chain (leaf serial %s, issuer %q) does not verify against %d trusted root(s) %s: %w",
			pki.Serial(leaf), leaf.Issuer.CommonName, len(roots), shortFingerprints(roots), err)
	}
	if want != "" {
		if !hasURI(leaf, want) {
			return fmt.Errorf("peer certificate has SANs %v, expected URI:%s", pki.SANs(leaf), want)
		}
		return nil
	}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			return nil
		}
	}
	return fmt.Errorf("peer certificate has no SPIFFE URI SAN (SANs %v)", pki.SANs(leaf))
}

func shortFingerprints(certs []*x509.Certificate) string {
	fps := make([]string, len(certs))
	for i, c := range certs {
		fps[i] = pki.ShortFingerprint(c)
	}
	return "[" + strings.Join(fps, " ") + "]"
}

// clientConfig returns the TLS configuration with which p connects as
// identity src to a peer that must present dst (clientTLS with p's current
// credentials); ok is false when p holds no certificate for src.
func clientConfig(p Proxy, src, dst string, now func() time.Time) (*tls.Config, bool) {
	cert, roots, ok := p.credentials(src)
	if !ok {
		return nil, false
	}
	return clientTLS(cert, roots, src, dst, now), true
}

// clientTLS is the configuration of a client holding cert that trusts
// roots: TLS 1.3 only, and the server's chain verified against those roots
// with dst's SPIFFE URI required.
func clientTLS(cert *Certificate, roots []*x509.Certificate, src, dst string, now func() time.Time) *tls.Config {
	tc := cert.tlsCertificate()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		ServerName: sniFor(dst),
		// Verification is done below against the client's current roots and
		// the expected SPIFFE identity, as ztunnel and envoy do; there is no
		// DNS name to check.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return tc, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if err := verifyPeer(raw, roots, now(), dst); err != nil {
				return fmt.Errorf("client %s rejected the server certificate: %w", src, err)
			}
			return nil
		},
	}
}

// mtlsServer is a proxy's mTLS listener. Each accepted connection completes a
// TLS 1.3 handshake with the proxy's current certificate for the requested
// identity, verifies the client's chain against the current roots and writes
// "ok\n"; it then answers every "ping\n" with "pong\n" until the client
// closes, so the Probe can hold long-lived connections. Rejections are
// recorded by client address so that the Probe can report the server's
// reason, not just the TLS alert; so is the reason whenever the proxy ends a
// connection itself (drain deadline, pod deleted).
//
// The server also tracks the proxy's outbound long-lived connections (the
// Probe registers them), because a proxy that terminates ends the
// connections it originated as well as those it accepted.
type mtlsServer struct {
	name string
	ln   net.Listener
	// creds returns the certificate to present for an identity and the
	// roots to verify clients with, as the proxy holds them now.
	creds credentialsFunc
	now   func() time.Time
	log   *slog.Logger
	// identityFor maps the SNI of a ClientHello to the identity to present.
	identityFor func(sni string) (string, bool)

	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	outbound outboundConns
	errs     map[string]string
	// ends records why the proxy ended a connection, keyed by the client's
	// address (the local address of the Probe's socket).
	ends map[string]string
	done bool
	// onRecord, when set, is told of every rejection and every end the
	// server records (an envoy stand-in writes them to its event log).
	onRecord func(kind, client, reason string)
	stats    listenerStats
}

// credentialsFunc is a proxy's credentials: see Proxy.credentials.
type credentialsFunc func(identity string) (*Certificate, []*x509.Certificate, bool)

// listenerStats counts what a listener saw, by envoy's listener stat names.
type listenerStats struct {
	// cxTotal: downstream_cx_total; cxActive: downstream_cx_active.
	cxTotal, cxActive uint64
	// handshakes: ssl.handshake; verifyErrors: ssl.fail_verify_error;
	// connErrors: ssl.connection_error.
	handshakes, verifyErrors, connErrors uint64
}

// maxRecordedErrors bounds the rejection reasons kept for the Probe.
const maxRecordedErrors = 512

// connDeadline bounds a probe connection's handshake on the server side.
const connDeadline = 5 * time.Second

// startMTLS opens a proxy's mTLS listener on addr ("127.0.0.1:0" for any
// port).
func startMTLS(name, addr string, creds credentialsFunc, identityFor func(string) (string, bool), now func() time.Time, log *slog.Logger) (*mtlsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: mTLS listener: %w", name, err)
	}
	s := &mtlsServer{
		name: name, ln: ln, creds: creds, now: now, log: log, identityFor: identityFor,
		conns: map[net.Conn]struct{}{},
		errs:  map[string]string{}, ends: map[string]string{},
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *mtlsServer) addr() string { return s.ln.Addr().String() }

func (s *mtlsServer) serve() {
	defer s.wg.Done()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		MaxVersion:         tls.VersionTLS13,
		GetConfigForClient: s.configForClient,
	}
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			_ = conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.stats.cxTotal++
		s.stats.cxActive++
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(tls.Server(conn, cfg), conn)
	}
}

func (s *mtlsServer) handle(tc *tls.Conn, raw net.Conn) {
	defer s.wg.Done()
	defer func() {
		_ = tc.Close()
		s.mu.Lock()
		delete(s.conns, raw)
		s.stats.cxActive--
		s.mu.Unlock()
	}()
	_ = tc.SetDeadline(time.Now().Add(connDeadline))
	if err := tc.Handshake(); err != nil {
		s.log.Debug("mTLS handshake failed", "server", s.name, "peer", raw.RemoteAddr().String(), "err", err)
		s.mu.Lock()
		s.stats.connErrors++
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.stats.handshakes++
	s.mu.Unlock()
	if _, err := tc.Write([]byte("ok\n")); err != nil {
		return
	}
	// A long-lived connection: answer each ping until the client closes or
	// stays silent past the idle deadline.
	r := bufio.NewReader(tc)
	for {
		_ = tc.SetDeadline(time.Now().Add(idleDeadline))
		line, err := r.ReadString('\n')
		if err != nil || line != pingMsg {
			return
		}
		if _, err := tc.Write([]byte(pongMsg)); err != nil {
			return
		}
	}
}

// The messages of a long-lived probe connection.
const (
	pingMsg = "ping\n"
	pongMsg = "pong\n"
)

// idleDeadline ends a long-lived connection whose client went silent.
const idleDeadline = 30 * time.Second

// configForClient picks the identity from the SNI and builds the handshake's
// configuration from the proxy's state at this moment.
func (s *mtlsServer) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	remote := hello.Conn.RemoteAddr().String()
	id, ok := s.identityFor(hello.ServerName)
	if !ok {
		err := fmt.Errorf("server %s holds no identity for SNI %q", s.name, hello.ServerName)
		s.record(remote, err)
		return nil, err
	}
	cert, roots, ok := s.creds(id)
	if !ok {
		err := fmt.Errorf("server %s holds no certificate for %s yet", s.name, id)
		s.record(remote, err)
		return nil, err
	}
	serverID := cert.Identity.String()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert.tlsCertificate()},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if err := verifyPeer(raw, roots, s.now(), ""); err != nil {
				err = fmt.Errorf("server %s (%s) rejected the client certificate: %w", s.name, serverID, err)
				s.mu.Lock()
				s.stats.verifyErrors++
				s.mu.Unlock()
				s.record(remote, err)
				return err
			}
			return nil
		},
	}, nil
}

// record keeps a rejection reason for the client at remote. It runs before
// the TLS alert is sent, so a client that sees the alert finds the reason.
func (s *mtlsServer) record(remote string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) >= maxRecordedErrors {
		clear(s.errs)
	}
	s.errs[remote] = err.Error()
	if s.onRecord != nil {
		s.onRecord(recordReject, remote, err.Error())
	}
}

// What an onRecord hook is told.
const (
	recordReject = "reject"
	recordEnd    = "end"
)

// snapshot returns the listener's counters.
func (s *mtlsServer) snapshot() listenerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// closed reports whether the proxy stopped: its listener is closed and
// every connection it held has ended.
func (s *mtlsServer) closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// takeError returns and forgets the rejection reason recorded for the
// client at remote.
func (s *mtlsServer) takeError(remote string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	reason, ok := s.errs[remote]
	delete(s.errs, remote)
	return reason, ok
}

// endReason returns and forgets why the proxy ended the connection whose
// client address is local.
func (s *mtlsServer) endReason(local string) (string, bool) {
	if r, ok := s.outbound.take(local); ok {
		return r, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	reason, ok := s.ends[local]
	delete(s.ends, local)
	return reason, ok
}

// trackOutbound registers a long-lived connection the proxy originated, so
// that it ends with the proxy; the returned function unregisters it. It
// reports false, registering nothing, when the proxy is already stopping.
func (s *mtlsServer) trackOutbound(c net.Conn) (untrack func(), ok bool) {
	return s.outbound.track(c)
}

// startDrain marks the proxy as terminating: it keeps serving what it holds
// (and any straggler that still reaches its listener) until endAll.
func (s *mtlsServer) startDrain() {
	s.outbound.close()
}

// endAll ends every connection the proxy holds, inbound and outbound, and
// records reason for each so the Probe can say why its connection reset.
func (s *mtlsServer) endAll(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endAllLocked(reason)
}

func (s *mtlsServer) endAllLocked(reason string) {
	if len(s.ends) >= maxRecordedErrors {
		clear(s.ends)
	}
	// The first reason stands: a drain's deadline, not the Stop after it.
	note := func(key string) {
		if _, ok := s.ends[key]; !ok {
			s.ends[key] = reason
			if s.onRecord != nil {
				s.onRecord(recordEnd, key, reason)
			}
		}
	}
	for c := range s.conns {
		note(c.RemoteAddr().String())
		_ = c.Close()
	}
	s.outbound.endAll(reason)
}

// close stops accepting, ends open connections ("pod deleted" unless a
// drain already ended them) and waits for every handler.
func (s *mtlsServer) close() {
	s.mu.Lock()
	s.done = true
	s.outbound.close()
	s.endAllLocked("proxy " + s.name + " stopped (pod deleted)")
	s.mu.Unlock()
	_ = s.ln.Close()
	s.wg.Wait()
}
