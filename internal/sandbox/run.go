package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshca/meshca/internal/bundle"

	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/sandbox/cluster"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// Sandbox is a running proving ground: one cluster, or several sharing a
// root (Options.Clusters), with one probe over all of them.
type Sandbox struct {
	opts    Options
	members []*Member
	probe   *mesh.Probe
	cancel  context.CancelFunc
	control *http.Server
	started time.Time
}

// Member is one cluster of a sandbox: its control plane, its istiod and its
// simulated data plane.
type Member struct {
	opts    Options
	cluster *cluster.Cluster
	rt      *runtime
	done    chan struct{}
}

// Start brings the whole sandbox up and returns once every proxy holds its
// certificates and every proxy pod is Ready. On failure everything started
// so far is stopped.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	names := opts.clusterNames()
	bundles, err := caBundles(&opts, names)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	if missing := (cluster.Config{BinDir: opts.BinDir}).Missing(); len(missing) > 0 {
		return nil, fmt.Errorf("sandbox: control-plane binaries missing (%v): build them with `make controlplane` (about 9 minutes the first time)", missing)
	}
	if agent := filepath.Join(opts.BinDir, "pilot-agent"); opts.Agent == AgentReal {
		if st, err := os.Stat(agent); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("sandbox: --agent real needs %s (the real istio-agent): build it with `make controlplane`, or run the simulated agent with --agent simulated", agent)
		}
	}
	opts.istiodVersion = IstiodVersion(opts.BinDir)
	switch opts.CA {
	case CASelfSigned:
		opts.Logf("CA: istiod's self-signed CA (secret %s/%s, no %s)", IstioNamespace, SelfSignedSecret, CACertsSecret)
	case CAExpiring:
		what := "intermediate"
		if opts.ExpireRoot {
			what = "root and intermediate"
		}
		opts.Logf("CA: plug-in CA whose %s expires in %s (at %s)", what, opts.CALifetime, time.Now().Add(opts.CALifetime).UTC().Format(time.RFC3339))
	}
	envoys := fmt.Sprintf("envoy pods: %s with %s", agentLabel, envoyLabel)
	if opts.Agent == AgentSimulated {
		envoys = "envoy/istio-agent simulated " + proxyVersion
	}
	opts.Logf("istiod %s (pilot-discovery built from istio.io/istio); ztunnel simulated %s; %s",
		opts.istiodVersion, ztunnelReleases[opts.ZtunnelVersion].tag, envoys)
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Sandbox{opts: opts, cancel: cancel, started: t0}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if opts.ProbeInterval > 0 {
		if s.probe, err = mesh.NewProbe(mesh.ProbeOptions{Endpoints: s.endpoints, Interval: opts.ProbeInterval, LongLived: opts.LongLived}); err != nil {
			return nil, err
		}
	}
	for _, name := range names {
		mo := opts
		mo.ClusterName = name
		if name != "" {
			mo.Dir = filepath.Join(opts.Dir, name)
		}
		m, err := s.startMember(ctx, runCtx, mo, bundles[name])
		if m != nil {
			s.members = append(s.members, m)
		}
		if err != nil {
			return nil, err
		}
	}
	if err := s.writeKubeconfig(); err != nil {
		return nil, err
	}
	if err := s.WaitReady(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	if s.probe != nil {
		go s.probe.Run(runCtx)
		s.probe.Reset()
	}
	opts.Logf("sandbox ready in %s", time.Since(t0).Round(time.Millisecond))
	if err := s.serveControl(); err != nil {
		return nil, err
	}
	return s, nil
}

// startMember starts one cluster: control plane, nodes, the runtime that
// plays kubelet, and the simulated Istio install with its CA bundle b. The
// member is returned even on error, so that it can be stopped.
func (s *Sandbox) startMember(ctx, runCtx context.Context, opts Options, b *bundle.Bundle) (*Member, error) {
	t0 := time.Now()
	label := "cluster " + opts.ClusterName + ": "
	if opts.ClusterName == "" {
		label = ""
	}
	cfg := cluster.Config{Dir: filepath.Join(opts.Dir, "cluster"), BinDir: opts.BinDir, CRDs: []string{cluster.IstioCRDs}, Logf: opts.Logf, ReadinessGate: ProxyReadyGate}
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m := &Member{opts: opts, cluster: c, done: make(chan struct{})}
	opts.Logf("%scontrol plane up in %s", label, time.Since(t0).Round(time.Millisecond))
	if err := c.AddNodes(ctx, opts.Nodes, "sandbox"); err != nil {
		close(m.done)
		return m, err
	}
	opts.Logf("%s%d nodes ready", label, opts.Nodes)
	if m.rt, err = newRuntime(&m.opts, c); err != nil {
		close(m.done)
		return m, err
	}
	if s.probe != nil {
		m.rt.data.setSink(s.probe)
	}
	go func() {
		defer close(m.done)
		if err := m.rt.run(runCtx); err != nil {
			opts.Logf("%ssandbox runtime: %v", label, err)
		}
	}()
	spec := installSpec{
		Workloads: opts.Workloads, CertTTL: opts.CertTTL.String(),
		MultiRoot: opts.MultiRoot, XDSAgent: opts.XDSAgent, ZtunnelVersion: opts.ZtunnelVersion,
		IstiodVersion: opts.istiodVersion, GracePeriod: opts.GracePeriod, ClusterID: opts.clusterID(),
		Bundle: b, AppNamespaces: s.AppNamespaces(), ServiceAccounts: opts.ServiceAccounts,
	}
	if opts.Sidecars > 0 {
		// Before istiod starts: it serves injection only when it finds its
		// templates.
		if err := m.rt.installInjection(ctx, c.Client()); err != nil {
			return m, err
		}
	}
	if err := install(ctx, c.Client(), spec); err != nil {
		return m, err
	}
	if err := installSidecars(ctx, c.Client(), opts.Sidecars, opts.GracePeriod); err != nil {
		return m, err
	}
	if opts.Sidecars > 0 {
		go m.rt.checkAdmission(runCtx)
	}
	return m, nil
}

// endpoints is the probe's view: every member's proxies.
func (s *Sandbox) endpoints() []mesh.Endpoint {
	var out []mesh.Endpoint
	for _, m := range s.members {
		if m.rt != nil {
			out = append(out, m.rt.data.endpoints()...)
		}
	}
	return out
}

// WaitReady waits until, in every cluster, istiod serves, every ztunnel
// holds a certificate for each identity of its node, every envoy proxy holds
// its certificate, and every proxy pod is Ready (its admin port answered an
// unretried port-forward).
func (s *Sandbox) WaitReady(ctx context.Context, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		for _, m := range s.members {
			if last = m.pending(); last != "" {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("sandbox not ready after %s: %s", timeout, last)
	}
	return nil
}

// pending says what the member still waits for, or "" when ready.
func (m *Member) pending() string {
	if m.rt == nil {
		return "runtime not started"
	}
	prefix := ""
	if m.opts.ClusterName != "" {
		prefix = "cluster " + m.opts.ClusterName + ": "
	}
	st := m.status()
	if p := st.pending(); p != "" {
		return prefix + p
	}
	if n, example := m.rt.data.unready(); n > 0 {
		return fmt.Sprintf("%s%d proxy pods not Ready yet (e.g. %s: its admin port does not answer a port-forward yet)", prefix, n, example)
	}
	return ""
}

// Stop stops the probe, then in every cluster the data plane, istiod and
// the control plane.
func (s *Sandbox) Stop() error {
	if s.control != nil {
		_ = s.control.Close()
	}
	if s.cancel != nil {
		s.cancel()
	}
	var errs []error
	for _, m := range s.members {
		errs = append(errs, m.stop())
	}
	_ = os.Remove(filepath.Join(s.opts.Dir, StateFile))
	return errors.Join(errs...)
}

func (m *Member) stop() error {
	if m.rt != nil {
		<-m.done
		m.rt.shutdown()
	}
	return m.cluster.Stop()
}

// Dir is the sandbox directory.
func (s *Sandbox) Dir() string { return s.opts.Dir }

// Kubeconfig is the path of the admin kubeconfig: one context per cluster
// (named after it) in a multi-cluster sandbox.
func (s *Sandbox) Kubeconfig() string { return filepath.Join(s.opts.Dir, KubeconfigFile) }

// Members are the clusters of the sandbox, in order.
func (s *Sandbox) Members() []*Member { return s.members }

// Client is an admin clientset of the first cluster.
func (s *Sandbox) Client() kubernetes.Interface { return s.members[0].Client() }

// Cluster is the control plane of the first cluster.
func (s *Sandbox) Cluster() *cluster.Cluster { return s.members[0].cluster }

// Probe returns the mTLS probe's counters (zero when the probe is off).
func (s *Sandbox) Probe() mesh.Snapshot {
	if s.probe == nil {
		return mesh.Snapshot{}
	}
	// Real agents count their failed CSRs themselves: read them now.
	for _, m := range s.members {
		if m.rt != nil {
			m.rt.data.syncAgentCSRs(context.Background())
		}
	}
	return s.probe.Snapshot()
}

// ResetProbe zeroes the probe's counters.
func (s *Sandbox) ResetProbe() {
	if s.probe != nil {
		s.probe.Reset()
	}
}

// Held lists what every identity of every live simulated proxy of every
// cluster holds now, read from the proxies themselves (not through their
// admin APIs).
func (s *Sandbox) Held() []HeldCert {
	var out []HeldCert
	for _, m := range s.members {
		out = append(out, m.Held()...)
	}
	return out
}

// AppNamespaces are the ambient namespaces of the workloads and waypoints.
func (s *Sandbox) AppNamespaces() []string {
	out := make([]string, s.opts.AppNamespaces)
	for i := range out {
		out[i] = fmt.Sprintf("apps-%d", i)
	}
	return out
}

// IstiodLogContains reports whether a running istiod of any cluster logged
// str.
func (s *Sandbox) IstiodLogContains(str string) bool {
	for _, m := range s.members {
		if m.rt.istiodLogContains(str) {
			return true
		}
	}
	return false
}

// EnvoyPods says what runs the envoy pods: the real pilot-agent with the
// envoy stand-in, or the simulated istio-agent.
func (s *Sandbox) EnvoyPods() string {
	if s.opts.Agent == AgentReal {
		return envoyLabel + " behind " + agentLabel + " " + s.opts.istiodVersion
	}
	return "envoy and istio-agent " + proxyVersion + " (simulated, in-process)"
}

// AgentLogLines returns the lines of the real pilot-agents' logs (every
// live envoy pod of every member, Options.Agent real) that contain substr,
// each prefixed with its pod.
func (s *Sandbox) AgentLogLines(substr string) []string {
	var out []string
	for _, m := range s.members {
		if m.rt != nil {
			out = append(out, m.rt.data.agentLogLines(substr)...)
		}
	}
	return out
}

// Draining counts the proxies of every cluster that are terminating: they
// still hold connections until their drain deadline.
func (s *Sandbox) Draining() int {
	n := 0
	for _, m := range s.members {
		if m.rt != nil {
			m.rt.data.mu.Lock()
			n += len(m.rt.data.draining)
			m.rt.data.mu.Unlock()
		}
	}
	return n
}

// StallPCDS injects a fault for tests: the simulated istio-agent of pod
// ns/name gets no more trust-bundle pushes, so it keeps the roots it holds
// although its pod says PCDS is live, like a real istio-agent whose ROOTCA
// kept a retired root (rotate.ReasonPCDSLag). The pod's replacement is
// not affected. It reports whether the pod runs a simulated agent.
func (s *Sandbox) StallPCDS(ns, name string) bool {
	for _, m := range s.members {
		if m.rt == nil {
			continue
		}
		d := m.rt.data
		d.mu.Lock()
		p := d.proxies[ns+"/"+name]
		ok := p != nil && p.a != nil
		if ok {
			p.pcdsStalled = true
		}
		d.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// IstiodVersion is the version of the istiod the sandbox runs.
func (s *Sandbox) IstiodVersion() string { return s.opts.istiodVersion }

// rootCADir is where the root of the installed CA is kept; "" with
// istiod's self-signed CA (its root is in istio-ca-secret only).
func (s *Sandbox) rootCADir() string {
	if s.opts.CA == CASelfSigned {
		return ""
	}
	return filepath.Join(s.CADir(), "root")
}

// CADir is where the sandbox keeps the CA material it installed (the root key
// stays here, never in the cluster).
func (s *Sandbox) CADir() string { return filepath.Join(s.opts.Dir, CADir) }

// Name is the member's cluster name and kubeconfig context ("" in a
// single-cluster sandbox).
func (m *Member) Name() string { return m.opts.ClusterName }

// Client is the member's admin clientset.
func (m *Member) Client() kubernetes.Interface { return m.cluster.Client() }

// Cluster is the member's control plane.
func (m *Member) Cluster() *cluster.Cluster { return m.cluster }

// Held lists what the member's live proxies hold; in a multi-cluster
// sandbox each Proxy is prefixed with the cluster.
func (m *Member) Held() []HeldCert {
	held := m.rt.data.held()
	if m.opts.ClusterName != "" {
		for i := range held {
			held[i].Proxy = m.opts.ClusterName + "/" + held[i].Proxy
		}
	}
	return held
}

// Status is the JSON of `sandbox status`.
type Status struct {
	Dir        string `json:"dir"`
	Kubeconfig string `json:"kubeconfig"`
	Uptime     string `json:"uptime"`
	// IstiodVersion is what the real istiod is built from; ZtunnelVersion
	// and ProxyVersion are the releases the simulated proxies follow.
	IstiodVersion  string   `json:"istiodVersion"`
	ZtunnelVersion string   `json:"ztunnelVersion"`
	ProxyVersion   string   `json:"proxyVersion"`
	Clusters       []string `json:"clusters,omitempty"`
	// Draining counts terminating proxies that still hold connections
	// until their drain deadline.
	Draining int           `json:"draining"`
	Istiods  []string      `json:"istiods"`
	Proxies  []proxyStatus `json:"proxies"`
	Probe    mesh.Snapshot `json:"probe"`
}

// Status reports the sandbox's components and proxies (in a multi-cluster
// sandbox, istiod and proxy names are prefixed with their cluster).
func (s *Sandbox) Status(context.Context) (*Status, error) {
	st := &Status{
		Dir: s.opts.Dir, Kubeconfig: s.Kubeconfig(), Uptime: time.Since(s.started).Round(time.Second).String(),
		IstiodVersion: s.opts.istiodVersion, ZtunnelVersion: ztunnelReleases[s.opts.ZtunnelVersion].tag + " (simulated)",
		ProxyVersion: proxyVersion + " (simulated)", Probe: s.Probe(), Draining: s.Draining(),
	}
	if s.opts.Agent == AgentReal {
		st.ProxyVersion = s.EnvoyPods()
	}
	for _, m := range s.members {
		ms := m.status()
		if n := m.opts.ClusterName; n != "" {
			st.Clusters = append(st.Clusters, n)
			for i := range ms.Istiods {
				ms.Istiods[i] = n + "/" + ms.Istiods[i]
			}
			for i := range ms.Proxies {
				ms.Proxies[i].Pod = n + "/" + ms.Proxies[i].Pod
			}
		}
		st.Istiods = append(st.Istiods, ms.Istiods...)
		st.Proxies = append(st.Proxies, ms.Proxies...)
	}
	sort.Slice(st.Proxies, func(i, j int) bool { return st.Proxies[i].Pod < st.Proxies[j].Pod })
	return st, nil
}

// status is the member's istiods and proxies.
func (m *Member) status() *Status {
	st := &Status{}
	if m.rt == nil {
		return st
	}
	m.rt.mu.Lock()
	st.Istiods = append(st.Istiods, m.rt.order...)
	m.rt.mu.Unlock()
	st.Proxies = m.rt.data.status()
	return st
}

// pending says what a cluster still waits for, or "" when ready.
func (st *Status) pending() string {
	if len(st.Istiods) == 0 {
		return "istiod not running"
	}
	zt, agents := 0, 0
	for _, p := range st.Proxies {
		if p.Kind == "ztunnel" {
			zt++
		} else {
			agents++
		}
		if p.Available < p.Identities {
			return fmt.Sprintf("%s %s: %d of %d certificates (%s)", p.Kind, p.Pod, p.Available, p.Identities, p.Problem)
		}
	}
	if zt == 0 || agents == 0 {
		return fmt.Sprintf("%d ztunnels and %d envoy proxies running", zt, agents)
	}
	return ""
}

// Print writes the status as a table.
func (st *Status) Print(w io.Writer) error {
	p := st.Probe
	_, _ = fmt.Fprintf(w, "sandbox %s (up %s)\n  kubeconfig %s\n  istiod     %s (real, built from istio.io/istio) %v\n  ztunnel    %s\n  envoy      %s\n  probe      %d handshakes, %d failed, %d refused, %d resets of %d long-lived connections, %d failed CSRs since %s\n\n",
		st.Dir, st.Uptime, st.Kubeconfig, st.IstiodVersion, st.Istiods, st.ZtunnelVersion, st.ProxyVersion,
		p.Handshakes, p.Failures, p.Refused, p.Resets, p.Connections, p.IssuanceFailures, p.Since.Format(time.RFC3339))
	t := report.NewTable(w, "KIND", "POD", "NODE", "CERTIFICATES", "PROBLEM")
	for _, p := range st.Proxies {
		t.Row(p.Kind, p.Pod, p.Node, fmt.Sprintf("%d/%d", p.Available, p.Identities), p.Problem)
	}
	return t.Flush()
}

// serveControl serves status and probe to `meshca sandbox status|probe` on a
// loopback port recorded in the state file.
func (s *Sandbox) serveControl() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, _ := s.Status(r.Context())
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /probe", func(w http.ResponseWriter, r *http.Request) {
		snap := s.Probe()
		if r.URL.Query().Get("reset") == "true" {
			s.ResetProbe()
		}
		writeJSON(w, snap)
	})
	s.control = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.control.Serve(ln) }()
	st := &State{
		PID: os.Getpid(), Kubeconfig: s.Kubeconfig(), ControlAddr: ln.Addr().String(), Started: s.started, Ready: true,
		Nodes: s.opts.Nodes, Workloads: s.opts.Workloads, RootCA: s.rootCADir(),
		IstiodVersion: s.opts.istiodVersion,
	}
	for _, m := range s.members {
		if m.opts.ClusterName != "" {
			st.Clusters = append(st.Clusters, m.opts.ClusterName)
		}
	}
	return writeState(s.opts.Dir, st)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeKubeconfig writes Dir/kubeconfig: the admin kubeconfig of a single
// cluster, or one context per cluster (named after it, the first current)
// with every cluster's own server, CA and client certificate.
func (s *Sandbox) writeKubeconfig() error {
	out := clientcmdapi.NewConfig()
	for _, m := range s.members {
		cfg, err := clientcmd.LoadFromFile(m.cluster.Kubeconfig())
		if err != nil {
			return err
		}
		if m.opts.ClusterName == "" {
			out = cfg
			break
		}
		cur := cfg.Contexts[cfg.CurrentContext]
		name := m.opts.ClusterName
		out.Clusters[name] = cfg.Clusters[cur.Cluster]
		out.AuthInfos[name] = cfg.AuthInfos[cur.AuthInfo]
		out.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
		if out.CurrentContext == "" {
			out.CurrentContext = name
		}
	}
	return clientcmd.WriteToFile(*out, s.Kubeconfig())
}

// FetchStatus asks the sandbox running in dir for its status.
func FetchStatus(ctx context.Context, dir string) (*Status, error) {
	var st Status
	return &st, fetch(ctx, dir, "/status", &st)
}

// FetchProbe asks the sandbox running in dir for its probe counters,
// resetting them afterwards when reset is set.
func FetchProbe(ctx context.Context, dir string, reset bool) (*mesh.Snapshot, error) {
	var snap mesh.Snapshot
	path := "/probe"
	if reset {
		path += "?reset=true"
	}
	return &snap, fetch(ctx, dir, path, &snap)
}

func fetch(ctx context.Context, dir, path string, v any) error {
	st, err := ReadState(dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+st.ControlAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("sandbox in %s (pid %d) does not answer: %w; is it still running? (meshca sandbox up --dir %s)", dir, st.PID, err, dir)
	}
	defer func() { _ = resp.Body.Close() }()
	return json.NewDecoder(resp.Body).Decode(v)
}

// Down stops the sandbox running in dir: its process first (which stops
// istiod, the proxies and the control plane), then any component left
// behind (for example after the sandbox process was killed).
func Down(dir string, grace time.Duration) error {
	var errs []error
	if st, err := ReadState(dir); err == nil && st.PID > 0 {
		if p, err := os.FindProcess(st.PID); err == nil && p.Signal(syscall.SIGTERM) == nil {
			deadline := time.Now().Add(grace)
			for time.Now().Before(deadline) && p.Signal(syscall.Signal(0)) == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	clusters, _ := filepath.Glob(filepath.Join(dir, "*", "cluster"))
	for _, c := range append([]string{filepath.Join(dir, "cluster")}, clusters...) {
		if err := cluster.StopDir(c, 10*time.Second); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(filepath.Join(dir, StateFile))
	return errors.Join(errs...)
}
