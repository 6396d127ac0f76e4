package sandbox

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// adminPort is the pod port of the ztunnel and envoy admin APIs.
const adminPort = 15000

// errNoRootCert: the pod started before istiod wrote its namespace's
// istio-ca-root-cert; as in a real pod, the proxy cannot start until the
// ConfigMap exists, and the runtime retries.
var errNoRootCert = errors.New("configmap " + RootCertConfig + " not written by istiod yet")

// dataPlane runs the simulated proxies backing ztunnel and envoy pods.
type dataPlane struct {
	r *runtime

	mu       sync.Mutex
	ztunnels map[string]*mesh.Ztunnel // pod key → ztunnel
	agents   map[string]*agentPod     // pod key → agent
	tokens   map[string]cachedToken   // ns/sa → token
}

type agentPod struct {
	agent *mesh.Agent
	ns    string
	// lastPush is the root-cert.pem last pushed, so only changes are pushed.
	lastPush []byte
}

type cachedToken struct {
	token   string
	expires time.Time
}

func newDataPlane(r *runtime) *dataPlane {
	return &dataPlane{r: r, ztunnels: map[string]*mesh.Ztunnel{}, agents: map[string]*agentPod{}, tokens: map[string]cachedToken{}}
}

func (d *dataPlane) ca() mesh.CAClient {
	return mesh.CAClient{Address: d.r.svc.Addr(), ClusterID: ClusterID, Token: d.token}
}

// token returns a cached istio-ca token for the identity's ServiceAccount.
func (d *dataPlane) token(ctx context.Context, id mesh.Identity) (string, error) {
	key := id.Namespace + "/" + id.ServiceAccount
	d.mu.Lock()
	t, ok := d.tokens[key]
	d.mu.Unlock()
	if ok && time.Until(t.expires) > 10*time.Minute {
		return t.token, nil
	}
	tok, err := d.r.token(ctx, id.Namespace, id.ServiceAccount)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	d.tokens[key] = cachedToken{token: tok, expires: time.Now().Add(time.Hour)}
	d.mu.Unlock()
	return tok, nil
}

// podStart reads what a proxy pod sees when it starts: the env of its
// istio-proxy container, its SECRET_TTL, and the istio-ca-root-cert bytes
// mounted from its namespace (errNoRootCert while istiod has not written
// them yet).
func (d *dataPlane) podStart(pod *corev1.Pod) (env map[string]string, ttl time.Duration, trust []byte, err error) {
	env = podEnv(pod, proxyContainer)
	ttl = d.r.opts.CertTTL
	if v, err := time.ParseDuration(env[EnvSecretTTL]); err == nil && v > 0 {
		ttl = v
	}
	if trust = d.r.rootCertOf(pod.Namespace); len(trust) == 0 {
		return nil, 0, nil, errNoRootCert
	}
	return env, ttl, trust, nil
}

func (d *dataPlane) startZtunnel(ctx context.Context, pod *corev1.Pod) error {
	key := pod.Namespace + "/" + pod.Name
	_, ttl, trust, err := d.podStart(pod)
	if err != nil {
		return fmt.Errorf("ztunnel %s: %w", key, err)
	}
	opts := mesh.ZtunnelOptions{
		Node: pod.Spec.NodeName, CA: d.ca(), TrustPEM: trust, SecretTTL: ttl,
		Logger: slog.Default().With("ztunnel", pod.Name),
	}
	if d.r.opts.ZtunnelVersion == "1.30" {
		opts.Version130 = true
		ns := pod.Namespace
		opts.ReloadTrust = func(context.Context) ([]byte, error) { return d.r.rootCertOf(ns), nil }
	}
	z, err := mesh.StartZtunnel(opts)
	if err != nil {
		return fmt.Errorf("ztunnel %s: %w", key, err)
	}
	if err := d.r.cluster.ForwardPort(ctx, pod.Namespace, pod.Name, adminPort, z.AdminPort()); err != nil {
		z.Stop()
		return err
	}
	d.mu.Lock()
	d.ztunnels[key] = z
	d.mu.Unlock()
	return d.setIdentities(z)
}

func (d *dataPlane) setIdentities(z *mesh.Ztunnel) error {
	var ids []mesh.Identity
	for _, s := range d.r.identitiesOn(z.Node()) {
		id, err := mesh.ParseIdentity(s)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	return z.SetIdentities(ids)
}

// workloadsChanged re-derives the identities of the ztunnel on node (every
// ztunnel when node is empty).
func (d *dataPlane) workloadsChanged(node string) {
	d.mu.Lock()
	var zs []*mesh.Ztunnel
	for _, z := range d.ztunnels {
		if node == "" || z.Node() == node {
			zs = append(zs, z)
		}
	}
	d.mu.Unlock()
	for _, z := range zs {
		if err := d.setIdentities(z); err != nil {
			slog.Warn("sandbox: ztunnel identities", "node", z.Node(), "err", err)
		}
	}
}

func (d *dataPlane) startAgent(ctx context.Context, pod *corev1.Pod, kind podKind) error {
	key := pod.Namespace + "/" + pod.Name
	env, ttl, trust, err := d.podStart(pod)
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	mk := map[podKind]mesh.Kind{kindWaypoint: mesh.KindWaypoint, kindGateway: mesh.KindGateway, kindSidecar: mesh.KindSidecar}[kind]
	a, err := mesh.StartAgent(mesh.AgentOptions{
		Kind: mk, Namespace: pod.Namespace, Pod: pod.Name, Node: pod.Spec.NodeName,
		Identity: mesh.Identity{TrustDomain: TrustDomain, Namespace: pod.Namespace, ServiceAccount: sa},
		CA:       d.ca(), TrustPEM: trust, SecretTTL: ttl,
		// PCDS works only when the pod got PROXY_CONFIG_XDS_AGENT at creation
		// and istiod has ISTIO_MULTIROOT_MESH (istio-ca-facts.md §2).
		PCDS:   env[EnvXDSAgent] == "true" && d.r.istiodMultiRoot(),
		Logger: slog.Default().With(kind.String(), key),
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	if err := d.r.cluster.ForwardPort(ctx, pod.Namespace, pod.Name, adminPort, a.AdminPort()); err != nil {
		a.Stop()
		return err
	}
	d.mu.Lock()
	d.agents[key] = &agentPod{agent: a, ns: pod.Namespace, lastPush: trust}
	d.mu.Unlock()
	return nil
}

// rootCertChanged is PCDS: istiod pushes its new trust bundle to every
// istio-agent when root-cert.pem changes. The sandbox takes the change from
// the istio-ca-root-cert ConfigMap that istiod rewrites on the same reload;
// agents without live PCDS ignore the push.
func (d *dataPlane) rootCertChanged(ns string, pem []byte) {
	d.mu.Lock()
	var targets []*agentPod
	for _, a := range d.agents {
		if a.ns == ns && !bytes.Equal(a.lastPush, pem) {
			a.lastPush = pem
			targets = append(targets, a)
		}
	}
	d.mu.Unlock()
	for _, a := range targets {
		if _, err := a.agent.PushTrustBundle(pem); err != nil {
			slog.Warn("sandbox: trust bundle push", "agent", a.agent.Name(), "err", err)
		}
	}
}

func (d *dataPlane) stopProxy(ns, name string) {
	key := ns + "/" + name
	d.mu.Lock()
	z := d.ztunnels[key]
	a := d.agents[key]
	delete(d.ztunnels, key)
	delete(d.agents, key)
	d.mu.Unlock()
	if z != nil {
		z.Stop()
	}
	if a != nil {
		a.agent.Stop()
	}
}

func (d *dataPlane) stopAll() {
	d.mu.Lock()
	var keys []string
	for k := range d.ztunnels {
		keys = append(keys, k)
	}
	for k := range d.agents {
		keys = append(keys, k)
	}
	d.mu.Unlock()
	for _, k := range keys {
		ns, name, _ := cache.SplitMetaNamespaceKey(k)
		d.stopProxy(ns, name)
	}
}

// endpoints lists the live proxies for the probe.
func (d *dataPlane) endpoints() []mesh.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]mesh.Endpoint, 0, len(d.ztunnels)+len(d.agents))
	for _, z := range d.ztunnels {
		out = append(out, z.Endpoint())
	}
	for _, a := range d.agents {
		out = append(out, a.agent.Endpoint())
	}
	return out
}

// proxyStatus summarises the data plane for readiness and `sandbox status`.
type proxyStatus struct {
	Kind       string `json:"kind"`
	Pod        string `json:"pod"`
	Node       string `json:"node"`
	Identities int    `json:"identities"`
	Available  int    `json:"available"`
	Problem    string `json:"problem,omitempty"`
}

func (d *dataPlane) status() []proxyStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []proxyStatus
	for key, z := range d.ztunnels {
		st := proxyStatus{Kind: "ztunnel", Pod: key, Node: z.Node()}
		for _, id := range z.Identities() {
			st.Identities++
			if id.State == mesh.StateAvailable {
				st.Available++
			} else if st.Problem == "" {
				st.Problem = id.Identity.String() + ": " + id.State
			}
		}
		out = append(out, st)
	}
	for key, a := range d.agents {
		st := proxyStatus{Kind: string(a.agent.Kind()), Pod: key, Node: a.agent.Endpoint().Node, Identities: 1}
		if a.agent.Certificate() != nil {
			st.Available = 1
		} else {
			st.Problem = a.agent.LastError()
		}
		out = append(out, st)
	}
	return out
}

// HeldCert is what one identity of one live proxy holds: its trust roots and
// the intermediate that signed its leaf.
type HeldCert struct {
	Proxy, Identity string
	Roots           []string // fingerprints, as held (duplicates kept)
	Signer          string   // fingerprint of the certificate after the leaf in the chain
	Err             string
}

// held lists what every identity of every live proxy holds now.
func (d *dataPlane) held() []HeldCert {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []HeldCert
	add := func(proxy, id string, c *mesh.Certificate, roots []*x509.Certificate, errMsg string) {
		h := HeldCert{Proxy: proxy, Identity: id, Err: errMsg}
		if c == nil {
			if h.Err == "" {
				h.Err = "no certificate"
			}
			out = append(out, h)
			return
		}
		h.Roots = pki.Fingerprints(roots)
		if len(c.Chain) > 1 {
			h.Signer = pki.Fingerprint(c.Chain[1])
		}
		out = append(out, h)
	}
	for key, z := range d.ztunnels {
		for _, id := range z.Identities() {
			var roots []*x509.Certificate
			if id.Cert != nil {
				roots = id.Cert.Roots
			}
			msg := ""
			if id.State != mesh.StateAvailable {
				msg = id.State
			}
			add(key, id.Identity.String(), id.Cert, roots, msg)
		}
	}
	for key, a := range d.agents {
		c, msg := a.agent.Certificate(), ""
		if c == nil {
			msg = a.agent.LastError()
		}
		add(key, a.agent.Identity().String(), c, a.agent.RootCA(), msg)
	}
	return out
}
