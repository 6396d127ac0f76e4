package mesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Names of the SDS secrets istio-agent serves to envoy (facts §4).
const (
	SecretDefault = "default"
	SecretRootCA  = "ROOTCA"
)

// Type URLs of envoy's admin dump.
const (
	secretsConfigDumpType   = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
	bootstrapConfigDumpType = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
	secretType              = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// AgentOptions configures a simulated envoy proxy with its istio-agent.
type AgentOptions struct {
	// Kind is KindWaypoint, KindGateway or KindSidecar.
	Kind Kind
	// Namespace and Pod name the proxy's pod.
	Namespace, Pod string
	// Node is the node the pod runs on.
	Node string
	// Identity is the pod's ServiceAccount identity. Required.
	Identity Identity
	// CA reaches istiod's CA service. Address and Token are required.
	CA CAClient
	// TrustPEM is root-cert.pem of the istio-ca-root-cert ConfigMap at pod
	// start: the agent's trust in istiod. Required.
	TrustPEM []byte
	// PCDS tells whether the trust-bundle push is live for this pod: the pod
	// has PROXY_CONFIG_XDS_AGENT=true AND istiod runs with
	// ISTIO_MULTIROOT_MESH=true (facts §2).
	PCDS bool
	// SecretTTL is the requested certificate validity; DefaultSecretTTL when
	// zero.
	SecretTTL time.Duration
	// Now is the clock for expiry, dumps and TLS verification; time.Now when
	// nil.
	Now func() time.Time
	// RetryBackoff and MaxRetryBackoff shape the retries of a failed CSR.
	RetryBackoff, MaxRetryBackoff time.Duration
	// Logger receives the agent's logs; slog.Default() when nil.
	Logger *slog.Logger
	// OnIssuanceFailure is told of every failed CSR; optional.
	OnIssuanceFailure IssuanceFunc
}

// Agent is a simulated envoy proxy (waypoint, gateway or sidecar) with its
// istio-agent: one workload certificate (secret "default"), the roots of
// secret "ROOTCA", PCDS when live, an admin server with envoy's
// /config_dump and an mTLS listener for the Probe.
type Agent struct {
	common
	kind     Kind
	name     string
	node     string
	identity Identity
	pcds     bool
	// startTrust is the ConfigMap's roots at pod start.
	startTrust []*x509.Certificate

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}
	admin  *adminServer
	mtls   *mtlsServer
	once   sync.Once

	mu             sync.Mutex
	cert           *Certificate
	certUpdated    time.Time
	lastErr        string
	respRoots      []*x509.Certificate // roots of the last CSR response
	bundlePEM      []byte              // last trust bundle seen (initially TrustPEM)
	bundleRoots    []*x509.Certificate // PCDS trust bundle; nil without PCDS
	rootCA         []*x509.Certificate
	rootCAUpdated  time.Time
	rootCAVersion  int
	certVersion    int
	pushesIgnored  int
	pushesAccepted int
}

// StartAgent starts a simulated envoy proxy: it requests its certificate at
// once and keeps it refreshed. Stop ends it.
func StartAgent(opts AgentOptions) (*Agent, error) {
	switch opts.Kind {
	case KindWaypoint, KindGateway, KindSidecar:
	default:
		return nil, fmt.Errorf("agent %s/%s: kind %q: expected waypoint, gateway or sidecar", opts.Namespace, opts.Pod, opts.Kind)
	}
	if opts.Namespace == "" || opts.Pod == "" {
		return nil, errors.New("agent: namespace and pod name are required")
	}
	name := opts.Namespace + "/" + opts.Pod
	label := string(opts.Kind) + "/" + name
	if err := opts.Identity.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	trust, err := parseTrust(label+": istio-ca-root-cert root-cert.pem", opts.TrustPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{
		common:     newCommon(opts.CA, opts.SecretTTL, opts.Now, opts.RetryBackoff, opts.MaxRetryBackoff, log.With("proxy", label)),
		kind:       opts.Kind,
		name:       name,
		node:       opts.Node,
		identity:   opts.Identity,
		pcds:       opts.PCDS,
		startTrust: trust,
		kick:       make(chan struct{}, 1),
		bundlePEM:  bytes.Clone(opts.TrustPEM),
	}
	a.onIssuance = opts.OnIssuanceFailure
	if a.pcds {
		// istiod pushes its bundle as soon as the agent connects: the same
		// roots the pod read at start.
		a.bundleRoots = trust
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	dump := func(r *http.Request) ([]byte, error) { return a.ConfigDump(r.URL.Query().Get("mask") != "") }
	if a.admin, a.mtls, err = startServers(label, a, dump, a.identityForSNI, a.now, a.log); err != nil {
		a.cancel()
		return nil, err
	}
	a.wg.Add(1)
	go a.run()
	a.log.Info("agent started", "identity", opts.Identity.String(), "admin", a.admin.addr(), "mtls", a.mtls.addr(), "pcds", opts.PCDS)
	return a, nil
}

// Kind returns the proxy's kind.
func (a *Agent) Kind() Kind { return a.kind }

// Name returns "<namespace>/<pod>".
func (a *Agent) Name() string { return a.name }

// Identity returns the proxy's workload identity.
func (a *Agent) Identity() Identity { return a.identity }

// AdminAddr is the admin server's address (the pod's port 15000).
func (a *Agent) AdminAddr() string { return a.admin.addr() }

// AdminPort is the admin server's port on 127.0.0.1.
func (a *Agent) AdminPort() int { return a.admin.port() }

// MTLSAddr is the address of the proxy's mTLS listener.
func (a *Agent) MTLSAddr() string { return a.mtls.addr() }

// Certificate returns the current workload certificate (secret "default"),
// nil before the first success.
func (a *Agent) Certificate() *Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cert
}

// RootCA returns the roots of secret ROOTCA: de-duplicated, sorted by PEM
// text.
func (a *Agent) RootCA() []*x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rootCA
}

// LastError returns the last CSR failure, empty after a success.
func (a *Agent) LastError() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

// PushTrustBundle delivers istiod's trust bundle (its root-cert.pem bytes)
// as PCDS would. The orchestrator calls it whenever those bytes change. With
// PCDS live and the bytes changed, the agent adds the bundle's roots to
// ROOTCA, trusts them for istiod and re-signs its workload certificate at
// once. Without PCDS the push is ignored: new roots arrive at the next refresh
// or on restart (facts §2, §4). It reports whether the push was applied.
func (a *Agent) PushTrustBundle(pemBytes []byte) (bool, error) {
	label := string(a.kind) + "/" + a.name
	if !a.pcds {
		a.mu.Lock()
		a.pushesIgnored++
		a.mu.Unlock()
		a.log.Debug("trust bundle push ignored: PCDS is not live for this proxy")
		return false, nil
	}
	roots, err := pki.ParseCertificates("pushed trust bundle", pemBytes)
	if err != nil {
		return false, fmt.Errorf("%s: %w", label, err)
	}
	a.mu.Lock()
	if bytes.Equal(pemBytes, a.bundlePEM) {
		a.mu.Unlock()
		return false, nil
	}
	a.bundlePEM = bytes.Clone(pemBytes)
	a.bundleRoots = roots
	a.pushesAccepted++
	a.updateRootCALocked()
	a.mu.Unlock()
	a.log.Info("trust bundle pushed: ROOTCA updated, re-signing the workload certificate", "roots", len(roots))
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return true, nil
}

// Endpoint describes the proxy for the Probe.
func (a *Agent) Endpoint() Endpoint {
	return Endpoint{Kind: a.kind, Name: a.name, Node: a.node, Identities: []string{a.identity.String()}, Address: a.mtls.addr(), Proxy: a}
}

// Stop ends the proxy: it cancels any CSR, closes both listeners and waits
// for all of its goroutines. It is safe to call more than once.
func (a *Agent) Stop() {
	a.once.Do(func() {
		a.cancel()
		a.admin.close()
		a.mtls.close()
		a.wg.Wait()
		a.log.Info("agent stopped")
	})
}

// run obtains the workload certificate, refreshes it at half its lifetime
// and re-signs at once after an accepted trust bundle push.
func (a *Agent) run() {
	defer a.wg.Done()
	backoff := a.backoff
	for {
		// A push that arrives during this CSR leaves a kick behind, so the
		// next CSR trusts the new bundle.
		select {
		case <-a.kick:
		default:
		}
		cert, err := a.ca.Sign(a.ctx, a.identity, a.ttl, a.istiodTrust())
		if a.ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err == nil {
			now := a.now()
			a.mu.Lock()
			a.cert, a.lastErr, a.certUpdated = cert, "", now
			a.certVersion++
			a.respRoots = cert.Roots
			a.updateRootCALocked()
			a.mu.Unlock()
			backoff = a.backoff
			wait = refreshDelay(cert.Leaf(), now)
			a.log.Info("certificate issued", "serial", cert.Leaf().SerialNumber.String(),
				"expires", rfc3339(cert.Leaf().NotAfter), "roots", len(cert.Roots), "refreshIn", wait.Round(time.Millisecond).String())
		} else {
			a.mu.Lock()
			a.lastErr = err.Error()
			a.mu.Unlock()
			wait = backoff
			backoff = a.nextBackoff(backoff)
			a.log.Warn("certificate request failed", "retryIn", wait.Round(time.Millisecond).String(), "err", err)
			a.issuanceFailed(string(a.kind)+"/"+a.name, a.identity.String(), err)
		}
		if !sleepCtx(a.ctx, wait, a.kick) {
			return
		}
	}
}

// istiodTrust is what the agent trusts istiod with: the roots read at pod
// start, plus the PCDS bundle when live.
func (a *Agent) istiodTrust() []*x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	trust := append([]*x509.Certificate{}, a.startTrust...)
	trust = append(trust, a.bundleRoots...)
	u, _ := pki.Unique(trust)
	return u
}

// updateRootCALocked recomputes ROOTCA: the roots of the last CSR response
// merged with the PCDS bundle, de-duplicated and sorted by PEM text as
// istio-agent does. a.mu must be held.
func (a *Agent) updateRootCALocked() {
	next := uniqueSortedByPEM(append(append([]*x509.Certificate{}, a.respRoots...), a.bundleRoots...))
	if sameCerts(next, a.rootCA) {
		return
	}
	a.rootCA = next
	a.rootCAUpdated = a.now()
	a.rootCAVersion++
}

func sameCerts(x, y []*x509.Certificate) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if !x[i].Equal(y[i]) {
			return false
		}
	}
	return true
}

// credentials implements Proxy: the default secret and ROOTCA.
func (a *Agent) credentials(identity string) (*Certificate, []*x509.Certificate, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert == nil || (identity != "" && identity != a.identity.String()) {
		return nil, nil, false
	}
	return a.cert, a.rootCA, true
}

func (a *Agent) server() serverSide { return a.mtls }

// issuanceError implements Proxy.
func (a *Agent) issuanceError(string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert != nil {
		return ""
	}
	return a.lastErr
}

// Ready implements Proxy: the workload certificate is held.
func (a *Agent) Ready() bool { return a.Certificate() != nil }

// Drain implements Proxy: the envoy pod is terminating. It keeps the
// connections it holds until after, then ends them with reason and stops.
func (a *Agent) Drain(after time.Duration, reason string) {
	a.log.Info("envoy draining", "deadline", after.String())
	drain(a.mtls, after, reason, a.ctx.Done(), a.Stop)
}

// identityForSNI: an envoy proxy has one identity whatever the SNI.
func (a *Agent) identityForSNI(string) (string, bool) { return a.identity.String(), true }

// SecretsDump returns envoy's SecretsConfigDump of the proxy's secrets (see
// RenderSecretsDump).
func (a *Agent) SecretsDump() ([]byte, error) {
	body, err := RenderSecretsDump(a.dumpSecrets())
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", a.kind, a.name, err)
	}
	return body, nil
}

// dumpSecrets lists what the proxy holds as envoy's dump shows it.
func (a *Agent) dumpSecrets() []DumpSecret {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []DumpSecret
	if a.cert != nil {
		out = append(out, DumpSecret{Name: SecretDefault, Version: fmt.Sprintf("%s/%d", rfc3339(a.certUpdated), a.certVersion),
			Updated: a.certUpdated, CertChainPEM: pki.EncodeCerts(a.cert.Chain...)})
	}
	if len(a.rootCA) > 0 {
		out = append(out, DumpSecret{Name: SecretRootCA, Version: fmt.Sprintf("%s/%d", rfc3339(a.rootCAUpdated), a.rootCAVersion),
			Updated: a.rootCAUpdated, TrustedCAPEM: pki.EncodeCerts(a.rootCA...)})
	}
	return out
}

// ConfigDump renders GET /config_dump as envoy does (see RenderConfigDump).
func (a *Agent) ConfigDump(masked bool) ([]byte, error) {
	body, err := RenderConfigDump(masked, a.nodeID(), a.clusterName(), a.now(), a.dumpSecrets())
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", a.kind, a.name, err)
	}
	return body, nil
}

// nodeID is the envoy node id istio-agent builds:
// <type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local.
func (a *Agent) nodeID() string {
	typ := "sidecar"
	if a.kind != KindSidecar {
		typ = "router"
	}
	ns, pod, _ := strings.Cut(a.name, "/")
	return fmt.Sprintf("%s~127.0.0.1~%s.%s~%s.svc.cluster.local", typ, pod, ns, ns)
}

func (a *Agent) clusterName() string {
	ns, pod, _ := strings.Cut(a.name, "/")
	return pod + "." + ns
}
