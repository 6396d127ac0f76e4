package mesh

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Certificate states as ztunnel reports them (facts §3).
const (
	StateInitializing = "Initializing"
	StateAvailable    = "Available"
	// StateUnavailablePrefix starts the state of an identity without a
	// usable certificate: "Unavailable: <reason>".
	StateUnavailablePrefix = "Unavailable: "
)

// DefaultMaxConcurrentCSRs bounds the CSRs one ztunnel has in flight.
const DefaultMaxConcurrentCSRs = 4

// ZtunnelOptions configures a simulated ztunnel pod.
type ZtunnelOptions struct {
	// Node is the node the ztunnel pod runs on. Required.
	Node string
	// CA reaches istiod's CA service. Address and Token are required.
	CA CAClient
	// TrustPEM is root-cert.pem of the istio-ca-root-cert ConfigMap as the
	// pod saw it at start: ztunnel's trust in istiod. In 1.28 it is read once
	// and never reloaded (facts §3). Required.
	TrustPEM []byte
	// Version is the ztunnel release simulated, shown in /config_dump
	// ("1.28.1" when empty).
	Version string
	// CACertWatcher models CA_CERT_WATCHER of ztunnel 1.28.6, 1.29.2 and
	// 1.30.0 (ztunnel#1775 and its backports): the CA client re-reads its
	// istiod root file on change. ReloadTrust is then called before every
	// CSR. Without it (1.28.0–1.28.5) the trust read at start is kept.
	CACertWatcher bool
	// ReloadTrust returns the ConfigMap's current root-cert.pem; used only
	// with CACertWatcher.
	ReloadTrust func(ctx context.Context) ([]byte, error)
	// SecretTTL is the requested certificate validity (SECRET_TTL);
	// DefaultSecretTTL when zero.
	SecretTTL time.Duration
	// Now is the clock for states, expiry and TLS verification; time.Now
	// when nil. Timers always run on real time.
	Now func() time.Time
	// RetryBackoff and MaxRetryBackoff shape the retries of a failed CSR.
	RetryBackoff, MaxRetryBackoff time.Duration
	// MaxConcurrentCSRs bounds the CSRs in flight; DefaultMaxConcurrentCSRs
	// when zero.
	MaxConcurrentCSRs int
	// Logger receives the ztunnel's logs; slog.Default() when nil.
	Logger *slog.Logger
	// OnIssuanceFailure is told of every failed CSR; optional.
	OnIssuanceFailure IssuanceFunc
}

// IdentityStatus is one identity held by a ztunnel.
type IdentityStatus struct {
	Identity Identity
	// State is Initializing, Available or "Unavailable: <reason>".
	State string
	// Cert is the certificate being served; nil before the first success.
	Cert *Certificate
	// LastError is the last CSR failure, empty after a success.
	LastError string
}

// Ztunnel is a simulated ztunnel 1.28 (CACertWatcher: 1.28.6+, 1.30): one
// certificate per identity of the ambient workloads on its node, an admin
// server with /config_dump, and an mTLS listener for the Probe.
type Ztunnel struct {
	common
	node    string
	watcher bool
	version string
	reload  func(ctx context.Context) ([]byte, error)
	sem     chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	admin  *adminServer
	mtls   *mtlsServer
	once   sync.Once

	mu      sync.Mutex
	trust   []*x509.Certificate
	ids     map[string]*ztunnelIdentity
	stopped bool
}

type ztunnelIdentity struct {
	id      Identity
	cancel  context.CancelFunc
	state   string
	cert    *Certificate
	lastErr string
}

// StartZtunnel starts a simulated ztunnel with no identities: its admin and
// mTLS listeners on 127.0.0.1. Call SetIdentities to give it workloads and
// Stop to end it.
func StartZtunnel(opts ZtunnelOptions) (*Ztunnel, error) {
	if opts.Node == "" {
		return nil, errors.New("ztunnel: a node name is required")
	}
	name := "ztunnel/" + opts.Node
	trust, err := parseTrust(name+": istio-ca-root-cert root-cert.pem", opts.TrustPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if opts.CACertWatcher && opts.ReloadTrust == nil {
		return nil, fmt.Errorf("%s: CACertWatcher needs ReloadTrust", name)
	}
	if opts.Version == "" {
		opts.Version = "1.28.1"
	}
	n := opts.MaxConcurrentCSRs
	if n <= 0 {
		n = DefaultMaxConcurrentCSRs
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	z := &Ztunnel{
		common:  newCommon(opts.CA, opts.SecretTTL, opts.Now, opts.RetryBackoff, opts.MaxRetryBackoff, log.With("proxy", name)),
		node:    opts.Node,
		watcher: opts.CACertWatcher,
		version: opts.Version,
		reload:  opts.ReloadTrust,
		sem:     make(chan struct{}, n),
		trust:   trust,
		ids:     map[string]*ztunnelIdentity{},
	}
	z.onIssuance = opts.OnIssuanceFailure
	z.ctx, z.cancel = context.WithCancel(context.Background())
	dump := func(*http.Request) ([]byte, error) { return z.ConfigDump() }
	if z.admin, z.mtls, err = startServers(name, z, dump, z.identityForSNI, z.now, z.log); err != nil {
		z.cancel()
		return nil, err
	}
	z.log.Info("ztunnel started", "admin", z.admin.addr(), "mtls", z.mtls.addr(), "trustedRoots", len(trust), "version", opts.Version, "caCertWatcher", opts.CACertWatcher)
	return z, nil
}

// Node returns the ztunnel's node.
func (z *Ztunnel) Node() string { return z.node }

// AdminAddr is the admin server's address (the pod's port 15000).
func (z *Ztunnel) AdminAddr() string { return z.admin.addr() }

// AdminPort is the admin server's port on 127.0.0.1.
func (z *Ztunnel) AdminPort() int { return z.admin.port() }

// MTLSAddr is the address of the ztunnel's mTLS listener.
func (z *Ztunnel) MTLSAddr() string { return z.mtls.addr() }

// SetIdentities replaces the identities the ztunnel holds certificates for:
// new ones start Initializing and request a certificate at once, removed ones
// are forgotten. Invalid identities are skipped and reported in the error;
// the valid ones are applied anyway.
func (z *Ztunnel) SetIdentities(ids []Identity) error {
	var errs []error
	want := map[string]Identity{}
	for _, id := range ids {
		if err := id.validate(); err != nil {
			errs = append(errs, fmt.Errorf("ztunnel/%s: %w", z.node, err))
			continue
		}
		want[id.String()] = id
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.stopped {
		return errors.Join(append(errs, fmt.Errorf("ztunnel/%s: stopped", z.node))...)
	}
	for key, e := range z.ids {
		if _, ok := want[key]; !ok {
			e.cancel()
			delete(z.ids, key)
			z.log.Info("identity removed", "identity", key)
		}
	}
	for key, id := range want {
		if _, ok := z.ids[key]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(z.ctx)
		e := &ztunnelIdentity{id: id, cancel: cancel, state: StateInitializing}
		z.ids[key] = e
		z.wg.Add(1)
		go z.run(ctx, e)
	}
	return errors.Join(errs...)
}

// Identities returns the identities and their states, sorted by identity.
func (z *Ztunnel) Identities() []IdentityStatus {
	z.mu.Lock()
	defer z.mu.Unlock()
	out := make([]IdentityStatus, 0, len(z.ids))
	for _, e := range z.ids {
		out = append(out, IdentityStatus{Identity: e.id, State: e.state, Cert: e.cert, LastError: e.lastErr})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity.String() < out[j].Identity.String() })
	return out
}

// Endpoint describes the ztunnel for the Probe.
func (z *Ztunnel) Endpoint() Endpoint {
	z.mu.Lock()
	ids := make([]string, 0, len(z.ids))
	for key := range z.ids {
		ids = append(ids, key)
	}
	z.mu.Unlock()
	sort.Strings(ids)
	return Endpoint{Kind: KindZtunnel, Name: z.node, Node: z.node, Identities: ids, Address: z.mtls.addr(), Proxy: z}
}

// Stop ends the ztunnel: it cancels every CSR, closes both listeners and
// waits for all of its goroutines. It is safe to call more than once.
func (z *Ztunnel) Stop() {
	z.once.Do(func() {
		z.mu.Lock()
		z.stopped = true
		z.mu.Unlock()
		z.cancel()
		z.admin.close()
		z.mtls.close()
		z.wg.Wait()
		z.log.Info("ztunnel stopped")
	})
}

// run obtains and refreshes the certificate of one identity until ctx ends.
func (z *Ztunnel) run(ctx context.Context, e *ztunnelIdentity) {
	defer z.wg.Done()
	backoff := z.backoff
	for {
		cert, err := z.fetch(ctx, e.id)
		if ctx.Err() != nil {
			return
		}
		now := z.now()
		var wait time.Duration
		z.mu.Lock()
		if err == nil {
			e.cert, e.state, e.lastErr = cert, StateAvailable, ""
			backoff = z.backoff
			wait = refreshDelay(cert.Leaf(), now)
		} else {
			e.lastErr = err.Error()
			wait = backoff
			if e.cert != nil && now.Before(e.cert.Leaf().NotAfter) {
				// Keep serving the previous certificate until it expires.
				wait = max(min(wait, e.cert.Leaf().NotAfter.Sub(now)), minDelay)
			} else {
				e.state = StateUnavailablePrefix + err.Error()
			}
			backoff = z.nextBackoff(backoff)
		}
		z.mu.Unlock()
		if err == nil {
			z.log.Info("certificate issued", "identity", e.id.String(), "serial", cert.Leaf().SerialNumber.String(),
				"expires", rfc3339(cert.Leaf().NotAfter), "roots", len(cert.Roots), "refreshIn", wait.Round(time.Millisecond).String())
		} else {
			z.log.Warn("certificate request failed", "identity", e.id.String(), "retryIn", wait.Round(time.Millisecond).String(), "err", err)
			z.issuanceFailed("ztunnel/"+z.node, e.id.String(), err)
		}
		if !sleepCtx(ctx, wait, nil) {
			return
		}
	}
}

// fetch sends one CSR, with the 1.28 trust fixed at start or, with
// CACertWatcher, the ConfigMap's current roots.
func (z *Ztunnel) fetch(ctx context.Context, id Identity) (*Certificate, error) {
	select {
	case z.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-z.sem }()
	if z.watcher {
		z.reloadTrust(ctx)
	}
	z.mu.Lock()
	trust := z.trust
	z.mu.Unlock()
	return z.ca.Sign(ctx, id, z.ttl, trust)
}

func (z *Ztunnel) reloadTrust(ctx context.Context) {
	data, err := z.reload(ctx)
	if err == nil {
		var roots []*x509.Certificate
		if roots, err = parseTrust("istio-ca-root-cert root-cert.pem", data); err == nil {
			z.mu.Lock()
			z.trust = roots
			z.mu.Unlock()
			return
		}
	}
	z.log.Warn("cannot reload the istiod root certificate: keeping the previous one", "err", err)
}

// credentials implements Proxy.
func (z *Ztunnel) credentials(identity string) (*Certificate, []*x509.Certificate, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	e, ok := z.ids[identity]
	if !ok || e.cert == nil {
		return nil, nil, false
	}
	return e.cert, e.cert.Roots, true
}

func (z *Ztunnel) server() serverSide { return z.mtls }

// issuanceError implements Proxy: the last CSR failure of an identity that
// holds no certificate.
func (z *Ztunnel) issuanceError(identity string) string {
	z.mu.Lock()
	defer z.mu.Unlock()
	if e, ok := z.ids[identity]; ok && e.cert == nil {
		return e.lastErr
	}
	return ""
}

// Ready implements Proxy: every identity of the node holds a certificate.
func (z *Ztunnel) Ready() bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, e := range z.ids {
		if e.cert == nil {
			return false
		}
	}
	return !z.stopped
}

// Drain implements Proxy: the ztunnel pod is terminating. It keeps the
// connections it holds until after, then ends them with reason and stops.
func (z *Ztunnel) Drain(after time.Duration, reason string) {
	z.log.Info("ztunnel draining", "deadline", after.String())
	drain(z.mtls, after, reason, z.ctx.Done(), z.Stop)
}

func (z *Ztunnel) identityForSNI(sni string) (string, bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	for key := range z.ids {
		if sniFor(key) == sni {
			return key, true
		}
	}
	return "", false
}

// ztunnelCert is one certificate of ztunnel's /config_dump.
type ztunnelCert struct {
	PEM            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// ztunnelCertsDump is one entry of the "certificates" array.
type ztunnelCertsDump struct {
	Identity  string        `json:"identity"`
	State     string        `json:"state"`
	CertChain []ztunnelCert `json:"certChain"`
	RootCerts []ztunnelCert `json:"rootCerts"`
}

// ztunnelConfigDump is the whole /config_dump: the proxy state (empty here:
// the simulation carries no xDS), static config, build info, a few config
// fields and the certificates.
type ztunnelConfigDump struct {
	Workloads      []any               `json:"workloads"`
	Services       []any               `json:"services"`
	Policies       []any               `json:"policies"`
	StagedServices map[string]any      `json:"stagedServices"`
	StaticConfig   ztunnelStaticConfig `json:"staticConfig"`
	Version        ztunnelBuildInfo    `json:"version"`
	Config         map[string]any      `json:"config"`
	Certificates   []ztunnelCertsDump  `json:"certificates"`
}

type ztunnelStaticConfig struct {
	Workloads []any `json:"workloads"`
	Policies  []any `json:"policies"`
	Services  []any `json:"services"`
}

type ztunnelBuildInfo struct {
	Version     string `json:"version"`
	GitRevision string `json:"gitRevision"`
	RustVersion string `json:"rustVersion"`
	BuildStatus string `json:"buildStatus"`
	GitTag      string `json:"gitTag"`
}

// ConfigDump renders GET /config_dump as ztunnel does: pretty JSON whose
// "certificates" array is sorted by identity, each certificate with pem
// (base64 of PEM), a decimal serialNumber and RFC 3339 times (facts §3).
func (z *Ztunnel) ConfigDump() ([]byte, error) {
	version := z.version
	dump := ztunnelConfigDump{
		Workloads:      []any{},
		Services:       []any{},
		Policies:       []any{},
		StagedServices: map[string]any{},
		StaticConfig:   ztunnelStaticConfig{Workloads: []any{}, Policies: []any{}, Services: []any{}},
		Version: ztunnelBuildInfo{
			Version: version, GitRevision: "meshca-sandbox-simulation", RustVersion: "n/a",
			BuildStatus: "Clean", GitTag: version,
		},
		Config: map[string]any{
			"caAddress":  "https://" + z.ca.Address,
			"caRootCert": "/var/run/secrets/istio/root-cert.pem",
			"clusterId":  orDefault(z.ca.ClusterID, DefaultClusterID),
			"localNode":  z.node,
			"proxyMode":  "Shared",
			"secretTtl":  map[string]any{"secs": int64(z.ttl / time.Second), "nanos": int64(z.ttl % time.Second)},
		},
		Certificates: []ztunnelCertsDump{},
	}
	for _, st := range z.Identities() {
		d := ztunnelCertsDump{Identity: st.Identity.String(), State: st.State, CertChain: []ztunnelCert{}, RootCerts: []ztunnelCert{}}
		// ztunnel lists a chain only for an Available identity.
		if st.Cert != nil && st.State == StateAvailable {
			for _, c := range st.Cert.Chain {
				d.CertChain = append(d.CertChain, dumpZtunnelCert(c))
			}
			for _, c := range st.Cert.Roots {
				d.RootCerts = append(d.RootCerts, dumpZtunnelCert(c))
			}
		}
		dump.Certificates = append(dump.Certificates, d)
	}
	body, err := json.MarshalIndent(dump, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("ztunnel/%s: config dump: %w", z.node, err)
	}
	return body, nil
}

func dumpZtunnelCert(c *x509.Certificate) ztunnelCert {
	return ztunnelCert{
		PEM:            b64PEM(c),
		SerialNumber:   c.SerialNumber.String(),
		ValidFrom:      rfc3339(c.NotBefore),
		ExpirationTime: rfc3339(c.NotAfter),
	}
}

func orDefault(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}
