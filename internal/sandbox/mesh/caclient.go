package mesh

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/internal/pki"
)

// Defaults of the CA client and of the proxies' certificate requests.
const (
	// DefaultServerName is the name istiod's serving certificate carries and
	// the proxies verify (local-control-plane.md, "CSR to istiod").
	DefaultServerName = "istiod.istio-system.svc"
	// DefaultClusterID is istiod's default cluster ID, sent as "clusterid".
	DefaultClusterID = "Kubernetes"
	// DefaultSecretTTL is SECRET_TTL's default: the validity requested for
	// workload certificates (facts §3).
	DefaultSecretTTL = 24 * time.Hour
	// DefaultCSRTimeout bounds one CreateCertificate call.
	DefaultCSRTimeout = 10 * time.Second
	// ImpersonatedIdentityKey is the request metadata key with which ztunnel
	// asks istiod for a certificate on behalf of a workload.
	ImpersonatedIdentityKey = "ImpersonatedIdentity"
)

// TokenFunc returns a bearer token for a CSR of identity: in the sandbox a
// TokenRequest token with audience istio-ca for the identity's
// ServiceAccount.
type TokenFunc func(ctx context.Context, id Identity) (string, error)

// CAClient requests workload certificates from istiod's CA service
// (istio.v1.auth.IstioCertificateService/CreateCertificate). The zero values
// of the optional fields take the defaults above.
type CAClient struct {
	// Address is istiod's secure gRPC address (port 15012), host:port.
	Address string
	// ServerName is verified on istiod's serving certificate.
	ServerName string
	// ClusterID is sent as the "clusterid" metadata.
	ClusterID string
	// Token supplies the bearer token of each request. Required.
	Token TokenFunc
	// Impersonate adds {"ImpersonatedIdentity": <SPIFFE ID>} to the request
	// metadata, as ztunnel does when it requests certificates with its own
	// token for the workloads of its node. Off by default: the sandbox sends
	// the workload's own token.
	Impersonate bool
	// Timeout bounds each call; DefaultCSRTimeout when zero.
	Timeout time.Duration
}

// Certificate is what one successful CSR yields.
type Certificate struct {
	Identity Identity
	// Key is the private key generated for the CSR.
	Key crypto.Signer
	// Chain is the leaf followed by every certificate of the response's
	// middle elements (istiod's cert-chain.pem, which may include a root).
	Chain []*x509.Certificate
	// Roots is every certificate of the response's last element (istiod's
	// whole root-cert.pem), in order, duplicates kept.
	Roots []*x509.Certificate
	// RootsPEM is the response's last element, verbatim.
	RootsPEM []byte
	// Received is when the response arrived.
	Received time.Time
}

// Leaf returns the workload certificate.
func (c *Certificate) Leaf() *x509.Certificate { return c.Chain[0] }

func (c *Certificate) tlsCertificate() *tls.Certificate {
	raw := make([][]byte, len(c.Chain))
	for i, x := range c.Chain {
		raw[i] = x.Raw
	}
	return &tls.Certificate{Certificate: raw, PrivateKey: c.Key, Leaf: c.Chain[0]}
}

// Sign generates a key and a CSR for id, sends it to istiod trusting only the
// roots in trust, and returns the signed certificate. ttl is the requested
// validity (SECRET_TTL), rounded down to whole seconds (at least one).
func (c *CAClient) Sign(ctx context.Context, id Identity, ttl time.Duration, trust []*x509.Certificate) (*Certificate, error) {
	cert, err := c.sign(ctx, id, ttl, trust)
	if err != nil {
		return nil, fmt.Errorf("CSR for %s to istiod at %s: %w", id, c.Address, err)
	}
	return cert, nil
}

func (c *CAClient) sign(ctx context.Context, id Identity, ttl time.Duration, trust []*x509.Certificate) (*Certificate, error) {
	if err := id.validate(); err != nil {
		return nil, err
	}
	if c.Address == "" {
		return nil, errors.New("no istiod address")
	}
	if c.Token == nil {
		return nil, errors.New("no token source")
	}
	if len(trust) == 0 {
		return nil, errors.New("no trusted root for istiod")
	}
	key, csrPEM, err := newCSR(id)
	if err != nil {
		return nil, err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultCSRTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	token, err := c.Token(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range trust {
		pool.AddCert(r)
	}
	serverName := c.ServerName
	if serverName == "" {
		serverName = DefaultServerName
	}
	clusterID := c.ClusterID
	if clusterID == "" {
		clusterID = DefaultClusterID
	}
	conn, err := grpc.NewClient("passthrough:///"+c.Address, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs:    pool,
		ServerName: serverName,
		MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		return nil, fmt.Errorf("gRPC client: %w", err)
	}
	defer func() { _ = conn.Close() }()
	secs := int64(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	req := &securityapi.IstioCertificateRequest{Csr: string(csrPEM), ValidityDuration: secs}
	if c.Impersonate {
		md, err := structpb.NewStruct(map[string]any{ImpersonatedIdentityKey: id.String()})
		if err != nil {
			return nil, fmt.Errorf("request metadata: %w", err)
		}
		req.Metadata = md
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "clusterid", clusterID)
	resp, err := securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
	if err != nil {
		return nil, err
	}
	chain, roots, rootsPEM, err := splitResponse(resp.GetCertChain())
	if err != nil {
		return nil, err
	}
	if !pki.KeyMatches(chain[0], key) {
		return nil, errors.New("response leaf does not carry the CSR's public key")
	}
	if !hasURI(chain[0], id.String()) {
		return nil, fmt.Errorf("response leaf has SANs %v, expected URI:%s", pki.SANs(chain[0]), id)
	}
	return &Certificate{Identity: id, Key: key, Chain: chain, Roots: roots, RootsPEM: rootsPEM, Received: time.Now()}, nil
}

// newCSR returns an ECDSA P-256 key and a PEM CSR whose only SAN is id's
// SPIFFE URI.
func newCSR(id Identity) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	u, err := url.Parse(id.String())
	if err != nil {
		return nil, nil, fmt.Errorf("SPIFFE URI: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// splitResponse reads istiod's cert_chain: the leaf first, then the middle
// elements (istiod sends its whole cert-chain.pem as one element; each element
// may hold several certificates), then the whole root-cert.pem as the last
// element, which may hold several roots (facts §1 and §3).
func splitResponse(elems []string) (chain, roots []*x509.Certificate, rootsPEM []byte, err error) {
	if len(elems) < 2 {
		return nil, nil, nil, fmt.Errorf("response cert_chain has %d element(s): expected the leaf first and istiod's roots last", len(elems))
	}
	for i, e := range elems[:len(elems)-1] {
		certs, err := pki.ParseCertificates(fmt.Sprintf("response cert_chain[%d]", i), []byte(e))
		if err != nil {
			return nil, nil, nil, err
		}
		if i == 0 && len(certs) != 1 {
			return nil, nil, nil, fmt.Errorf("response cert_chain[0] holds %d certificates: expected the leaf alone", len(certs))
		}
		chain = append(chain, certs...)
	}
	last := len(elems) - 1
	roots, err = pki.ParseCertificates(fmt.Sprintf("response cert_chain[%d] (roots)", last), []byte(elems[last]))
	if err != nil {
		return nil, nil, nil, err
	}
	return chain, roots, []byte(elems[last]), nil
}

func hasURI(c *x509.Certificate, want string) bool {
	for _, u := range c.URIs {
		if u.String() == want {
			return true
		}
	}
	return false
}
