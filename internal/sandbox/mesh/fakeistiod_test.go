package mesh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

// generation is one CA generation as the tools/certs Makefile lays it out:
// a root, an intermediate under it, cert-chain.pem = intermediate + root.
type generation struct {
	root, inter *pki.CA
	rootPEM     []byte
	chainPEM    []byte
}

func newGeneration(t *testing.T) generation {
	t.Helper()
	root := pkitest.Root(t, pki.ECDSAP256)
	inter := pkitest.Intermediate(t, root, pki.ECDSAP256, "cluster1")
	return generation{
		root: root, inter: inter,
		rootPEM:  pki.EncodeCert(root.Cert),
		chainPEM: pki.EncodeCerts(inter.Cert, root.Cert),
	}
}

// concat joins PEM files byte for byte, as meshca appends roots.
func concat(files ...[]byte) []byte {
	var out []byte
	for _, f := range files {
		out = append(out, f...)
	}
	return out
}

// fakeIstiod is an in-process IstioCertificateService answering as istiod
// does: leaf, then the whole cert-chain.pem, then the whole root-cert.pem;
// serving TLS with a certificate for istiod.istio-system.svc issued by its
// current signer. The signer and roots can be switched mid-test.
type fakeIstiod struct {
	securityapi.UnimplementedIstioCertificateServiceServer
	t    *testing.T
	addr string

	mu       sync.Mutex
	signer   *pki.CA
	chainPEM []byte
	rootPEM  []byte
	serving  *tls.Certificate
	requests int
	lastMD   metadata.MD
	lastReq  *securityapi.IstioCertificateRequest
}

func newFakeIstiod(t *testing.T, g generation) *fakeIstiod {
	t.Helper()
	f := &fakeIstiod{t: t}
	f.set(g.inter, g.chainPEM, g.rootPEM)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.serving, nil
		},
	})))
	securityapi.RegisterIstioCertificateServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

// set switches the signing CA and the files istiod serves, and re-issues
// istiod's serving certificate under the new signer, as a hot reload does.
func (f *fakeIstiod) set(signer *pki.CA, chainPEM, rootPEM []byte) {
	f.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.t.Fatal(err)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randomSerial(f.t),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{DefaultServerName},
	}, signer.Cert, key.Public(), signer.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signer, f.chainPEM, f.rootPEM = signer, chainPEM, rootPEM
	f.serving = &tls.Certificate{Certificate: [][]byte{der, signer.Cert.Raw}, PrivateKey: key}
}

func (f *fakeIstiod) stats() (int, metadata.MD, *securityapi.IstioCertificateRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, f.lastMD, f.lastReq
}

// CreateCertificate authenticates the token ("token-for:<SPIFFE ID>"),
// checks the CSR and signs it for ValidityDuration seconds.
func (f *fakeIstiod) CreateCertificate(ctx context.Context, req *securityapi.IstioCertificateRequest) (*securityapi.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.requests++
	f.lastMD, f.lastReq = md, req
	signer, chainPEM, rootPEM := f.signer, f.chainPEM, f.rootPEM
	f.mu.Unlock()

	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer token-for:") {
		return nil, status.Error(codes.Unauthenticated, "request authenticate failure")
	}
	if cid := md.Get("clusterid"); len(cid) != 1 || cid[0] != DefaultClusterID {
		return nil, status.Errorf(codes.Unauthenticated, "unknown cluster %v", cid)
	}
	caller := strings.TrimPrefix(auth[0], "Bearer token-for:")
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, status.Error(codes.InvalidArgument, "CSR is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != caller {
		return nil, status.Errorf(codes.PermissionDenied, "CSR SANs %v do not match the caller %s", csr.URIs, caller)
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: randomSerial(f.t),
		NotBefore:    now,
		NotAfter:     now.Add(time.Duration(req.GetValidityDuration()) * time.Second),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         csr.URIs,
	}, signer.Cert, csr.PublicKey, signer.Key)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	leaf := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &securityapi.IstioCertificateResponse{CertChain: []string{string(leaf), string(chainPEM), string(rootPEM)}}, nil
}

func randomSerial(t *testing.T) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// testToken is the TokenFunc the fake istiod accepts.
func testToken(_ context.Context, id Identity) (string, error) {
	return "token-for:" + id.String(), nil
}

func (f *fakeIstiod) client() CAClient {
	return CAClient{Address: f.addr, Token: testToken}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// eventually polls cond until it holds or the timeout passes; it never
// asserts how long the wait took.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ident(sa string) Identity {
	return Identity{TrustDomain: "cluster.local", Namespace: "ambient", ServiceAccount: sa}
}

func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%s (%s)", c.Subject.CommonName, pki.ShortFingerprint(c))
}
