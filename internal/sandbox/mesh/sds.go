package mesh

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/pki"
)

// SecretTypeURL is the xDS type of an SDS secret.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SDSSecret is one secret as an istio-agent served it over SDS: the raw
// inline bytes envoy would load, with when and in which version it arrived.
type SDSSecret struct {
	// Name is "default" or "ROOTCA".
	Name string
	// Version is the response's version_info.
	Version string
	// Updated is when the response arrived.
	Updated time.Time
	// CertChain and PrivateKey are the PEM of a tls_certificate secret.
	CertChain, PrivateKey []byte
	// TrustedCA is the PEM of a validation_context secret.
	TrustedCA []byte
}

// SDSWatch holds envoy's view of an istio-agent's SDS socket: the latest
// "default" and "ROOTCA" secrets, one stream per secret as envoy opens them,
// re-opened after any error. Every certificate and root comes from the
// agent; nothing here decides trust.
type SDSWatch struct {
	socket string
	node   *corev3.Node
	log    *slog.Logger
	// OnUpdate, when set before Start, is called after every accepted
	// secret.
	onUpdate func(SDSSecret)

	mu      sync.Mutex
	secrets map[string]SDSSecret
	lastErr string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// NewSDSWatch prepares a watch of the agent's SDS socket (a path, relative
// to the working directory or absolute) as the envoy node nodeID. onUpdate
// (optional) is told of every accepted secret.
func NewSDSWatch(socket, nodeID string, log *slog.Logger, onUpdate func(SDSSecret)) *SDSWatch {
	if log == nil {
		log = slog.Default()
	}
	return &SDSWatch{socket: socket, node: &corev3.Node{Id: nodeID}, log: log, onUpdate: onUpdate, secrets: map[string]SDSSecret{}}
}

// Start opens one stream for each of "default" and "ROOTCA" and keeps them
// open until Stop.
func (w *SDSWatch) Start() error {
	conn, err := grpc.NewClient("unix:"+w.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("sds socket %s: %w", w.socket, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	for _, name := range []string{SecretDefault, SecretRootCA} {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.stream(ctx, client, name)
		}()
	}
	go func() {
		<-ctx.Done()
		w.wg.Wait()
		_ = conn.Close()
	}()
	return nil
}

// Stop closes the streams and waits for them.
func (w *SDSWatch) Stop() {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
}

// Secret returns the latest secret of that name.
func (w *SDSWatch) Secret(name string) (SDSSecret, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.secrets[name]
	return s, ok
}

// LastError is the last stream error, empty after a success.
func (w *SDSWatch) LastError() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// stream keeps one SDS subscription open, re-opening it after errors with
// a capped backoff as envoy does.
func (w *SDSWatch) stream(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, name string) {
	backoff := 100 * time.Millisecond
	for {
		err := w.streamOnce(ctx, client, name)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.lastErr = fmt.Sprintf("sds stream %s: %v", name, err)
		w.mu.Unlock()
		w.log.Debug("sds stream ended", "secret", name, "err", err)
		if !sleepCtx(ctx, backoff, nil) {
			return
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (w *SDSWatch) streamOnce(ctx context.Context, client secretv3.SecretDiscoveryServiceClient, name string) error {
	s, err := client.StreamSecrets(ctx)
	if err != nil {
		return err
	}
	req := &discoveryv3.DiscoveryRequest{Node: w.node, ResourceNames: []string{name}, TypeUrl: SecretTypeURL}
	if err := s.Send(req); err != nil {
		return err
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		ack := &discoveryv3.DiscoveryRequest{Node: w.node, ResourceNames: []string{name}, TypeUrl: SecretTypeURL,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		secret, perr := w.parse(name, resp)
		if perr != nil {
			// A NACK keeps the previous secret, as envoy does.
			ack.VersionInfo = req.GetVersionInfo()
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: perr.Error()}
			w.log.Warn("sds secret rejected", "secret", name, "err", perr)
		} else {
			req = ack
			w.mu.Lock()
			w.secrets[name] = secret
			w.lastErr = ""
			w.mu.Unlock()
			if w.onUpdate != nil {
				w.onUpdate(secret)
			}
		}
		if err := s.Send(ack); err != nil {
			return err
		}
	}
}

func (w *SDSWatch) parse(name string, resp *discoveryv3.DiscoveryResponse) (SDSSecret, error) {
	out := SDSSecret{Name: name, Version: resp.GetVersionInfo(), Updated: time.Now()}
	for _, res := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := res.UnmarshalTo(&sec); err != nil {
			return out, fmt.Errorf("secret %s: %w", name, err)
		}
		if sec.GetName() != name {
			continue
		}
		if tc := sec.GetTlsCertificate(); tc != nil {
			out.CertChain = bytes.Clone(tc.GetCertificateChain().GetInlineBytes())
			out.PrivateKey = bytes.Clone(tc.GetPrivateKey().GetInlineBytes())
			if len(out.CertChain) == 0 || len(out.PrivateKey) == 0 {
				return out, fmt.Errorf("secret %s: tls_certificate without inline chain or key", name)
			}
			return out, nil
		}
		if vc := sec.GetValidationContext(); vc != nil {
			out.TrustedCA = bytes.Clone(vc.GetTrustedCa().GetInlineBytes())
			if len(out.TrustedCA) == 0 {
				return out, fmt.Errorf("secret %s: validation_context without inline trusted_ca", name)
			}
			return out, nil
		}
		return out, fmt.Errorf("secret %s: neither tls_certificate nor validation_context", name)
	}
	return out, fmt.Errorf("secret %s: not in the response (%d resources)", name, len(resp.GetResources()))
}

// Certificate turns a "default" secret into the workload certificate it
// carries: the chain, the private key and the identity of the leaf's SPIFFE
// URI.
func (s SDSSecret) Certificate() (*Certificate, error) {
	pair, err := tls.X509KeyPair(s.CertChain, s.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("sds secret %s: %w", s.Name, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("sds secret %s: private key of type %T cannot sign", s.Name, pair.PrivateKey)
	}
	chain := make([]*x509.Certificate, len(pair.Certificate))
	for i, der := range pair.Certificate {
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("sds secret %s: certificate %d: %w", s.Name, i, err)
		}
	}
	var id Identity
	for _, u := range chain[0].URIs {
		if u.Scheme == "spiffe" {
			if id, err = ParseIdentity(u.String()); err != nil {
				return nil, fmt.Errorf("sds secret %s: %w", s.Name, err)
			}
		}
	}
	if id.ServiceAccount == "" {
		return nil, errors.New("sds secret " + s.Name + ": leaf has no SPIFFE URI")
	}
	return &Certificate{Identity: id, Key: signer, Chain: chain, Received: s.Updated}, nil
}

// Roots parses the roots of a "ROOTCA" secret.
func (s SDSSecret) Roots() ([]*x509.Certificate, error) {
	roots, err := pki.ParseCertificates("sds secret "+s.Name, s.TrustedCA)
	if err != nil {
		return nil, err
	}
	return roots, nil
}
