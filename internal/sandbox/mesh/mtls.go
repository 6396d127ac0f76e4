package mesh

import (
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
	// Proxy is the simulated proxy itself: a *Ztunnel or an *Agent.
	Proxy Proxy
}

// String names the endpoint as failures are keyed: "ztunnel/node-1",
// "waypoint/ns/waypoint-xyz".
func (e Endpoint) String() string { return string(e.Kind) + "/" + e.Name }

// Proxy is a simulated proxy that takes part in probe traffic: *Ztunnel and
// *Agent.
type Proxy interface {
	// Endpoint describes the proxy's current state for the Probe.
	Endpoint() Endpoint
	// credentials returns the current certificate and trusted roots of
	// identity ("" for the proxy's only identity); ok is false while the
	// proxy holds no certificate for it.
	credentials(identity string) (cert *Certificate, roots []*x509.Certificate, ok bool)
	// server is the proxy's mTLS listener.
	server() *mtlsServer
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
// identity src to a peer that must present dst: TLS 1.3 only, p's current
// certificate, and the server's chain verified against p's CURRENT roots with
// dst's SPIFFE URI required. ok is false when p holds no certificate for src.
func clientConfig(p Proxy, src, dst string, now func() time.Time) (*tls.Config, bool) {
	cert, roots, ok := p.credentials(src)
	if !ok {
		return nil, false
	}
	tc := cert.tlsCertificate()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		ServerName: sniFor(dst),
		// Verification is done below against this proxy's current roots and
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
	}, true
}

// mtlsServer is a proxy's mTLS listener. Each accepted connection completes a
// TLS 1.3 handshake with the proxy's current certificate for the requested
// identity, verifies the client's chain against the current roots, writes
// "ok\n" and closes. Rejections are recorded by client address so that the
// Probe can report the server's reason, not just the TLS alert.
type mtlsServer struct {
	name string
	ln   net.Listener
	p    Proxy
	now  func() time.Time
	log  *slog.Logger
	// identityFor maps the SNI of a ClientHello to the identity to present.
	identityFor func(sni string) (string, bool)

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	errs  map[string]string
	done  bool
}

// maxRecordedErrors bounds the rejection reasons kept for the Probe.
const maxRecordedErrors = 512

// connDeadline bounds every probe connection on the server side.
const connDeadline = 5 * time.Second

func startMTLS(name string, p Proxy, identityFor func(string) (string, bool), now func() time.Time, log *slog.Logger) (*mtlsServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("%s: mTLS listener: %w", name, err)
	}
	s := &mtlsServer{
		name: name, ln: ln, p: p, now: now, log: log, identityFor: identityFor,
		conns: map[net.Conn]struct{}{}, errs: map[string]string{},
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
		s.mu.Unlock()
	}()
	_ = tc.SetDeadline(time.Now().Add(connDeadline))
	if err := tc.Handshake(); err != nil {
		s.log.Debug("mTLS handshake failed", "server", s.name, "peer", raw.RemoteAddr().String(), "err", err)
		return
	}
	_, _ = tc.Write([]byte("ok\n"))
}

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
	cert, roots, ok := s.p.credentials(id)
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
}

// closed reports whether the listener was closed (the proxy stopped).
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

// close stops accepting, closes open connections and waits for every
// handler.
func (s *mtlsServer) close() {
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
	s.wg.Wait()
}
