package mesh

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// AgentProxyOptions configures the probe's side of an envoy pod run by the
// real pilot-agent.
type AgentProxyOptions struct {
	// Kind is KindWaypoint, KindGateway or KindSidecar.
	Kind Kind
	// Namespace and Pod name the proxy's pod; Node is its node.
	Namespace, Pod, Node string
	// Identity is the pod's ServiceAccount identity.
	Identity Identity
	// SDSSocket is the agent's SDS socket (its working directory's
	// var/run/secrets/workload-spiffe-uds/socket).
	SDSSocket string
	// Now is the clock for TLS verification; time.Now when nil.
	Now func() time.Time
	// Logger receives the logs; slog.Default() when nil.
	Logger *slog.Logger
}

// AgentProxy is the probe's data path through an envoy pod whose
// istio-agent is the real pilot-agent: an SDS client of the agent's socket
// (like the envoy stand-in the agent runs, a second subscriber the agent
// serves the same secrets to) and an mTLS listener that presents the
// agent's "default" secret and trusts exactly its "ROOTCA". The
// certificate, key and roots all come from the real agent; nothing here
// requests a certificate or decides trust on its own.
type AgentProxy struct {
	kind     Kind
	name     string
	node     string
	identity Identity
	now      func() time.Time
	log      *slog.Logger
	sds      *SDSWatch
	mtls     *mtlsServer
	done     chan struct{}
	once     sync.Once

	mu      sync.Mutex
	cert    *Certificate
	roots   []*x509.Certificate
	lastErr string
}

// StartAgentProxy subscribes to the agent's SDS socket and opens the mTLS
// listener. Stop ends both.
func StartAgentProxy(opts AgentProxyOptions) (*AgentProxy, error) {
	switch opts.Kind {
	case KindWaypoint, KindGateway, KindSidecar:
	default:
		return nil, fmt.Errorf("agent proxy %s/%s: kind %q: expected waypoint, gateway or sidecar", opts.Namespace, opts.Pod, opts.Kind)
	}
	if opts.Namespace == "" || opts.Pod == "" || opts.SDSSocket == "" {
		return nil, errors.New("agent proxy: namespace, pod name and SDS socket are required")
	}
	name := opts.Namespace + "/" + opts.Pod
	label := string(opts.Kind) + "/" + name
	if err := opts.Identity.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	p := &AgentProxy{kind: opts.Kind, name: name, node: opts.Node, identity: opts.Identity, now: now,
		log: log.With("proxy", label), done: make(chan struct{})}
	p.sds = NewSDSWatch(opts.SDSSocket, label, p.log, p.update)
	var err error
	if p.mtls, err = startMTLS(label, p, p.identityForSNI, now, p.log); err != nil {
		return nil, err
	}
	if err := p.sds.Start(); err != nil {
		p.mtls.close()
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	return p, nil
}

// update takes in a secret the agent pushed.
func (p *AgentProxy) update(s SDSSecret) {
	switch s.Name {
	case SecretDefault:
		c, err := s.Certificate()
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.lastErr = err.Error()
			return
		}
		p.cert, p.lastErr = c, ""
	case SecretRootCA:
		roots, err := s.Roots()
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.lastErr = err.Error()
			return
		}
		p.roots = roots
	}
}

// Kind returns the proxy's kind.
func (p *AgentProxy) Kind() Kind { return p.kind }

// Name returns "<namespace>/<pod>".
func (p *AgentProxy) Name() string { return p.name }

// Identity returns the proxy's workload identity.
func (p *AgentProxy) Identity() Identity { return p.identity }

// Certificate returns the agent's current "default" secret, nil before the
// first.
func (p *AgentProxy) Certificate() *Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cert
}

// RootCA returns the roots of the agent's current "ROOTCA" secret.
func (p *AgentProxy) RootCA() []*x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.roots
}

// LastError is the last SDS problem, empty while the secrets flow.
func (p *AgentProxy) LastError() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lastErr != "" {
		return p.lastErr
	}
	if p.cert == nil {
		if e := p.sds.LastError(); e != "" {
			return e
		}
		return "no secret from the agent's SDS yet"
	}
	return ""
}

// Endpoint describes the proxy for the Probe.
func (p *AgentProxy) Endpoint() Endpoint {
	return Endpoint{Kind: p.kind, Name: p.name, Node: p.node, Identities: []string{p.identity.String()}, Address: p.mtls.addr(), Proxy: p}
}

// credentials implements Proxy: the agent's "default" and "ROOTCA".
func (p *AgentProxy) credentials(identity string) (*Certificate, []*x509.Certificate, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert == nil || len(p.roots) == 0 || (identity != "" && identity != p.identity.String()) {
		return nil, nil, false
	}
	return p.cert, p.roots, true
}

func (p *AgentProxy) server() *mtlsServer { return p.mtls }

// issuanceError implements Proxy: the CSR is the agent's; its failures are
// in the agent's log, not seen here.
func (p *AgentProxy) issuanceError(string) string { return "" }

// Ready implements Proxy: both secrets are held.
func (p *AgentProxy) Ready() bool {
	_, _, ok := p.credentials("")
	return ok
}

// Drain implements Proxy: the pod is terminating. It keeps the connections
// it holds until after, then ends them with reason and stops.
func (p *AgentProxy) Drain(after time.Duration, reason string) {
	p.log.Info("envoy pod draining", "deadline", after.String())
	drain(p.mtls, after, reason, p.done, p.Stop)
}

// Stop closes the listener and the SDS streams. It is safe to call more
// than once.
func (p *AgentProxy) Stop() {
	p.once.Do(func() {
		close(p.done)
		p.mtls.close()
		p.sds.Stop()
	})
}

// identityForSNI: an envoy proxy has one identity whatever the SNI.
func (p *AgentProxy) identityForSNI(string) (string, bool) { return p.identity.String(), true }
