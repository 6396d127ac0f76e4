package sandbox

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// adminPort is the pod port of the ztunnel and envoy admin APIs.
const adminPort = 15000

// errNoRootCert: the pod started before istiod wrote its namespace's
// istio-ca-root-cert; as in a real pod, the proxy cannot start until the
// ConfigMap exists, and the runtime retries.
var errNoRootCert = errors.New("configmap " + RootCertConfig + " not written by istiod yet")

// disruptions is told what a user of the mesh would feel that the proxies
// see first: failed certificate requests and terminated proxy pods. The
// Probe implements it.
type disruptions interface {
	IssuanceFailed(proxy, identity string, err error)
	ProxyTerminated(kind mesh.Kind)
	AdmissionChecked(err error)
}

// dataPlane runs the simulated proxies backing ztunnel and envoy pods.
type dataPlane struct {
	r *runtime

	mu       sync.Mutex
	proxies  map[string]*proxyPod     // pod key → live proxy
	draining map[*proxyPod]struct{}   // terminating, until their deadline
	targets  map[string]mesh.Endpoint // target → how it looks with no proxy
	tokens   map[string]cachedToken   // ns/sa → token
	sink     disruptions
}

// proxyPod is the simulated proxy of one pod.
type proxyPod struct {
	kind    mesh.Kind
	pod     string // ns/name
	ns      string
	target  string
	started time.Time
	grace   time.Duration
	z       *mesh.Ztunnel
	a       *mesh.Agent
	// e and agent back an envoy pod run by the real pilot-agent
	// (Options.Agent == AgentReal): the probe's view of the pod (its envoy
	// stand-in's listeners and event log, the agent's SDS), and the
	// process with its working directory.
	e     *mesh.AgentProxy
	agent *agentPod
	// lastPush is the root-cert.pem last pushed to an agent, so only
	// changes are pushed.
	lastPush []byte
	// pcdsStalled: a fault a test injects (Sandbox.StallPCDS); the
	// simulated agent gets no more trust-bundle pushes.
	pcdsStalled bool
	// ready is set once the pod's Ready condition was written.
	ready bool
}

func (p *proxyPod) proxy() mesh.Proxy {
	switch {
	case p.z != nil:
		return p.z
	case p.e != nil:
		return p.e
	}
	return p.a
}

func (p *proxyPod) endpoint(cluster string) mesh.Endpoint {
	e := p.proxy().Endpoint()
	e.Target, e.Cluster = p.target, cluster
	return e
}

type cachedToken struct {
	token   string
	expires time.Time
}

func newDataPlane(r *runtime) *dataPlane {
	return &dataPlane{
		r: r, proxies: map[string]*proxyPod{}, draining: map[*proxyPod]struct{}{},
		targets: map[string]mesh.Endpoint{}, tokens: map[string]cachedToken{},
	}
}

func (d *dataPlane) setSink(s disruptions) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sink = s
}

// issuanceFailed forwards a proxy's failed CSR to the sink.
func (d *dataPlane) issuanceFailed(proxy, identity string, err error) {
	d.mu.Lock()
	s := d.sink
	d.mu.Unlock()
	if s != nil {
		s.IssuanceFailed(proxy, identity, err)
	}
}

// admissionChecked forwards the result of an admission check to the sink.
func (d *dataPlane) admissionChecked(err error) {
	d.mu.Lock()
	s := d.sink
	d.mu.Unlock()
	if s != nil {
		s.AdmissionChecked(err)
	}
}

func (d *dataPlane) ca() mesh.CAClient {
	return mesh.CAClient{Address: d.r.svc.Addr(), ClusterID: d.r.opts.clusterID(), Token: d.token}
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
// istio-proxy container, its SECRET_TTL, its termination grace period, and
// the istio-ca-root-cert bytes mounted from its namespace (errNoRootCert
// while istiod has not written them yet).
func (d *dataPlane) podStart(pod *corev1.Pod) (env map[string]string, ttl, grace time.Duration, trust []byte, err error) {
	env = podEnv(pod, proxyContainer)
	ttl = d.r.opts.CertTTL
	if v, err := time.ParseDuration(env[EnvSecretTTL]); err == nil && v > 0 {
		ttl = v
	}
	grace = mesh.DefaultTerminationGracePeriod
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if trust = d.r.rootCertOf(pod.Namespace); len(trust) == 0 {
		return nil, 0, 0, nil, errNoRootCert
	}
	return env, ttl, grace, trust, nil
}

// workloadOf names the workload a pod belongs to: its Deployment (the
// ReplicaSet owner without the pod-template hash) or other owner, else the
// pod itself.
func workloadOf(pod *corev1.Pod) string {
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			if h := pod.Labels["pod-template-hash"]; o.Kind == "ReplicaSet" && h != "" {
				return strings.TrimSuffix(o.Name, "-"+h)
			}
			return o.Name
		}
	}
	return pod.Name
}

func (d *dataPlane) startZtunnel(ctx context.Context, pod *corev1.Pod) error {
	key := pod.Namespace + "/" + pod.Name
	_, ttl, grace, trust, err := d.podStart(pod)
	if err != nil {
		return fmt.Errorf("ztunnel %s: %w", key, err)
	}
	rel := ztunnelReleases[d.r.opts.ZtunnelVersion]
	opts := mesh.ZtunnelOptions{
		Node: pod.Spec.NodeName, CA: d.ca(), TrustPEM: trust, SecretTTL: ttl, Version: rel.tag,
		Logger: slog.Default().With("ztunnel", pod.Name), OnIssuanceFailure: d.issuanceFailed,
	}
	if rel.watcher {
		opts.CACertWatcher = true
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
	p := &proxyPod{kind: mesh.KindZtunnel, pod: key, ns: pod.Namespace, target: "ztunnel/" + pod.Spec.NodeName, started: time.Now(), grace: grace, z: z}
	d.add(p, mesh.Endpoint{Kind: mesh.KindZtunnel, Name: pod.Spec.NodeName, Node: pod.Spec.NodeName})
	if err := d.setIdentities(z); err != nil {
		return err
	}
	d.r.watchReady(pod, p)
	return nil
}

// add registers a started proxy and its target (prefixed with the cluster
// in a multi-cluster sandbox).
func (d *dataPlane) add(p *proxyPod, down mesh.Endpoint) {
	if c := d.r.opts.ClusterName; c != "" {
		p.target = c + "/" + p.target
	}
	down.Target, down.Cluster = p.target, d.r.opts.ClusterName
	d.mu.Lock()
	defer d.mu.Unlock()
	d.proxies[p.pod] = p
	d.targets[p.target] = down
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

// workloadsChanged re-derives the identities of the ztunnels on node
// (every ztunnel when node is empty).
func (d *dataPlane) workloadsChanged(node string) {
	d.mu.Lock()
	var zs []*mesh.Ztunnel
	for _, p := range d.proxies {
		if p.z != nil && (node == "" || p.z.Node() == node) {
			zs = append(zs, p.z)
		}
	}
	d.mu.Unlock()
	for _, z := range zs {
		if err := d.setIdentities(z); err != nil {
			slog.Warn("sandbox: ztunnel identities", "node", z.Node(), "err", err)
		}
	}
}

// envoyIdentity is the ServiceAccount of an envoy pod and its proxy kind.
func envoyIdentity(pod *corev1.Pod, kind podKind) (sa string, mk mesh.Kind) {
	sa = pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return sa, map[podKind]mesh.Kind{kindWaypoint: mesh.KindWaypoint, kindGateway: mesh.KindGateway, kindSidecar: mesh.KindSidecar}[kind]
}

func (d *dataPlane) startAgent(ctx context.Context, pod *corev1.Pod, kind podKind) error {
	if d.r.opts.Agent == AgentReal {
		return d.startRealAgent(ctx, pod, kind)
	}
	key := pod.Namespace + "/" + pod.Name
	env, ttl, grace, trust, err := d.podStart(pod)
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	sa, mk := envoyIdentity(pod, kind)
	a, err := mesh.StartAgent(mesh.AgentOptions{
		Kind: mk, Namespace: pod.Namespace, Pod: pod.Name, Node: pod.Spec.NodeName,
		Identity: mesh.Identity{TrustDomain: TrustDomain, Namespace: pod.Namespace, ServiceAccount: sa},
		CA:       d.ca(), TrustPEM: trust, SecretTTL: ttl,
		// PCDS works only when the pod got PROXY_CONFIG_XDS_AGENT at creation
		// and istiod has ISTIO_MULTIROOT_MESH (istio-ca-facts.md §2).
		PCDS:              env[EnvXDSAgent] == "true" && d.r.istiodMultiRoot(),
		Logger:            slog.Default().With(kind.String(), key),
		OnIssuanceFailure: d.issuanceFailed,
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	if err := d.r.cluster.ForwardPort(ctx, pod.Namespace, pod.Name, adminPort, a.AdminPort()); err != nil {
		a.Stop()
		return err
	}
	target := string(mk) + "/" + pod.Namespace + "/" + workloadOf(pod)
	p := &proxyPod{kind: mk, pod: key, ns: pod.Namespace, target: target, started: time.Now(), grace: grace, a: a, lastPush: trust}
	d.add(p, mesh.Endpoint{Kind: mk, Name: pod.Namespace + "/" + workloadOf(pod), Node: pod.Spec.NodeName})
	d.r.watchReady(pod, p)
	return nil
}

// rootCertChanged follows a namespace's istio-ca-root-cert. For a real
// agent it is the ConfigMap volume: the mounted file changes after the
// kubelet delay (PCDS reaches the real agent from istiod itself). For a
// simulated agent it stands in for PCDS: istiod pushes its new trust bundle
// to every istio-agent when root-cert.pem changes, and the sandbox takes
// the change from the ConfigMap istiod rewrites on the same reload; agents
// without live PCDS ignore the push.
func (d *dataPlane) rootCertChanged(ns string, pem []byte) {
	d.mu.Lock()
	var targets []*proxyPod
	for _, p := range d.proxies {
		if (p.a != nil || p.agent != nil) && p.ns == ns && !p.pcdsStalled && !bytes.Equal(p.lastPush, pem) {
			p.lastPush = pem
			targets = append(targets, p)
		}
	}
	d.mu.Unlock()
	for _, p := range targets {
		if p.agent != nil {
			d.updateRootCertVolume(p, pem)
			continue
		}
		if _, err := p.a.PushTrustBundle(pem); err != nil {
			slog.Warn("sandbox: trust bundle push", "agent", p.a.Name(), "err", err)
		}
	}
}

// terminate starts the termination of a pod's proxy: it takes no new
// connection from now on (its target moves to a newer proxy, or has none:
// a restart gap), keeps what it holds until its drain deadline (facts §7),
// then ends it and stops.
func (d *dataPlane) terminate(ns, name string) {
	key := ns + "/" + name
	d.mu.Lock()
	p := d.proxies[key]
	delete(d.proxies, key)
	if p != nil {
		d.draining[p] = struct{}{}
	}
	sink := d.sink
	d.mu.Unlock()
	if p == nil {
		return
	}
	if sink != nil {
		sink.ProxyTerminated(p.kind)
	}
	after := mesh.DrainDeadline(p.kind, p.grace)
	p.proxy().Drain(after, fmt.Sprintf("%s pod %s terminated: connections closed at its drain deadline (%s after the delete, grace period %s)", p.kind, key, after, p.grace))
	go p.stopAgent(p.grace)
	go func() {
		// Forget it once its deadline passed: Drain has stopped it.
		t := time.NewTimer(after + time.Second)
		defer t.Stop()
		<-t.C
		d.mu.Lock()
		delete(d.draining, p)
		d.mu.Unlock()
	}()
}

func (d *dataPlane) stopAll() {
	d.mu.Lock()
	var all []*proxyPod
	for _, p := range d.proxies {
		all = append(all, p)
	}
	for p := range d.draining {
		all = append(all, p)
	}
	clear(d.proxies)
	clear(d.draining)
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range all {
		switch {
		case p.z != nil:
			p.z.Stop()
		case p.e != nil:
			p.e.Stop()
			wg.Go(func() { p.stopAgent(2 * time.Second) })
		default:
			p.a.Stop()
		}
	}
	wg.Wait()
}

// endpoints lists, for the probe, one Endpoint per target: the newest
// proxy that is ready (holds its certificates), else the newest one, else —
// when a target has no live proxy at all — an Endpoint without a proxy, to
// which connections are refused.
func (d *dataPlane) endpoints() []mesh.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	best := map[string]*proxyPod{}
	for _, p := range d.proxies {
		b := best[p.target]
		pr, br := p.proxy().Ready(), b != nil && b.proxy().Ready()
		if b == nil || pr && !br || pr == br && p.started.After(b.started) {
			best[p.target] = p
		}
	}
	out := make([]mesh.Endpoint, 0, len(d.targets))
	for target, down := range d.targets {
		if p := best[target]; p != nil {
			out = append(out, p.endpoint(d.r.opts.ClusterName))
		} else {
			out = append(out, down)
		}
	}
	return out
}

// markReady records that p's pod was marked Ready.
func (d *dataPlane) markReady(p *proxyPod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p.ready = true
}

// unready counts the proxies whose pod is not marked Ready yet.
func (d *dataPlane) unready() (n int, example string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.proxies {
		if !p.ready {
			n++
			example = p.pod
		}
	}
	return n, example
}

// proxyStatus summarises the data plane for readiness and `sandbox status`.
type proxyStatus struct {
	Kind       string `json:"kind"`
	Pod        string `json:"pod"`
	Node       string `json:"node"`
	Identities int    `json:"identities"`
	Available  int    `json:"available"`
	Problem    string `json:"problem,omitempty"`
	// Agent and Envoy say what runs an envoy pod: the real pilot-agent or
	// the simulated one, and the envoy stand-in.
	Agent string `json:"agent,omitempty"`
	Envoy string `json:"envoy,omitempty"`
	// EnvoyAdmin is the envoy stand-in's admin address on a real-agent
	// pod (its pod port 15000).
	EnvoyAdmin string `json:"envoyAdmin,omitempty"`
}

func (d *dataPlane) status() []proxyStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []proxyStatus
	for key, p := range d.proxies {
		if z := p.z; z != nil {
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
			continue
		}
		if e := p.e; e != nil {
			st := proxyStatus{Kind: string(e.Kind()), Pod: key, Node: e.Endpoint().Node, Identities: 1, Agent: agentLabel, Envoy: envoyLabel,
				EnvoyAdmin: fmt.Sprintf("127.0.0.1:%d", p.agent.adminPort)}
			switch {
			case e.Ready():
				st.Available = 1
			case p.agent.exited():
				st.Problem = fmt.Sprintf("pilot-agent exited (%v): %s", p.agent.proc.Err(), p.agent.proc.LogTail())
			default:
				st.Problem = e.LastError()
			}
			out = append(out, st)
			continue
		}
		st := proxyStatus{Kind: string(p.a.Kind()), Pod: key, Node: p.a.Endpoint().Node, Identities: 1, Agent: "istio-agent (simulated, in-process)"}
		if p.a.Certificate() != nil {
			st.Available = 1
		} else {
			st.Problem = p.a.LastError()
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
	for key, p := range d.proxies {
		if z := p.z; z != nil {
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
			continue
		}
		if e := p.e; e != nil {
			c, msg := e.Certificate(), ""
			if c == nil {
				msg = e.LastError()
			}
			add(key, e.Identity().String(), c, e.RootCA(), msg)
			continue
		}
		c, msg := p.a.Certificate(), ""
		if c == nil {
			msg = p.a.LastError()
		}
		add(key, p.a.Identity().String(), c, p.a.RootCA(), msg)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Proxy+out[i].Identity < out[j].Proxy+out[j].Identity })
	return out
}
