package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Component names: the keys of Pids and the log file names under Dir/logs.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
	Kwok              = "kwok"
)

// binaries maps each component to its executable in Config.BinDir. The etcd
// server's main package is the module root, so `go build` names it "server".
var binaries = map[string]string{
	Etcd:              "server",
	APIServer:         "kube-apiserver",
	ControllerManager: "kube-controller-manager",
	Scheduler:         "kube-scheduler",
	Kwok:              "kwok",
}

// Assets, relative to Config.AssetsDir, as hack/controlplane.sh copies them
// from the kwok and istio modules.
const (
	// IstioCRDs is istio's CRD bundle (manifests/charts/base/files/crd-all.gen.yaml);
	// pass it in Config.CRDs to install istio's APIs.
	IstioCRDs = "istio/crd-all.gen.yaml"
	// KwokPortForwardCRD defines kwok's namespaced PortForward; Start applies it.
	KwokPortForwardCRD = "kwok/crds/kwok.x-k8s.io_portforwards.yaml"
)

// Config says where a cluster lives and where its binaries are.
type Config struct {
	// Dir holds everything the cluster writes (see the package
	// documentation). It is created if missing; certificates and keys
	// found there are reused.
	Dir string
	// BinDir holds the binaries hack/controlplane.sh builds.
	BinDir string
	// AssetsDir holds the kwok stages and CRDs; default BinDir/assets.
	AssetsDir string
	// CRDs are YAML files applied with ApplyYAML once the apiserver is
	// ready, before Start returns; relative paths are resolved against
	// AssetsDir (for example IstioCRDs).
	CRDs []string
	// StartTimeout bounds the readiness wait of each component; default 60s.
	StartTimeout time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL; default 10s.
	StopGrace time.Duration
	// Detach lets the components outlive the process that started them
	// (a "sandbox up" that returns); stop them later with StopDir. By
	// default they are killed when the starting process dies.
	Detach bool
	// Logf, if set, receives one line per start-up step.
	Logf func(format string, args ...any)
	// ReadinessGate, when set, is a pod readiness gate that kwok leaves to
	// the caller: pods carrying it turn Running but become Ready only when
	// the caller sets the gate's condition and Ready (see gateReadiness).
	ReadinessGate string
}

func (c Config) withDefaults() (Config, error) {
	if c.Dir == "" {
		return c, errors.New("cluster config: Dir is required")
	}
	if c.BinDir == "" {
		return c, errors.New("cluster config: BinDir is required")
	}
	var err error
	if c.Dir, err = filepath.Abs(c.Dir); err != nil {
		return c, fmt.Errorf("cluster dir %s: %w", c.Dir, err)
	}
	if c.BinDir, err = filepath.Abs(c.BinDir); err != nil {
		return c, fmt.Errorf("bin dir %s: %w", c.BinDir, err)
	}
	if c.AssetsDir == "" {
		c.AssetsDir = filepath.Join(c.BinDir, "assets")
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 10 * time.Second
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return c, nil
}

func (c Config) asset(path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(c.AssetsDir, path)
}

// Missing lists the binaries and assets Start needs that are absent from
// BinDir and AssetsDir; empty means the cluster can start. Tests skip (or,
// under CI, fail) when it is not empty.
func (c Config) Missing() []string {
	if c.BinDir == "" {
		return []string{"BinDir"}
	}
	if c.AssetsDir == "" {
		c.AssetsDir = filepath.Join(c.BinDir, "assets")
	}
	var missing []string
	for _, name := range []string{Etcd, APIServer, ControllerManager, Scheduler, Kwok} {
		if st, err := os.Stat(filepath.Join(c.BinDir, binaries[name])); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, filepath.Join(c.BinDir, binaries[name]))
		}
	}
	for _, a := range append(append([]string{KwokPortForwardCRD}, kwokStages...), c.CRDs...) {
		if _, err := os.Stat(c.asset(a)); err != nil {
			missing = append(missing, c.asset(a))
		}
	}
	return missing
}

// FindBinDir returns the directory holding the control-plane binaries:
// $MESHCA_BIN_DIR if set, else bin/ at the root of the meshca module found
// by walking up from the working directory.
func FindBinDir() (string, error) {
	if dir := os.Getenv("MESHCA_BIN_DIR"); dir != "" {
		return filepath.Abs(dir)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find bin dir: %w", err)
	}
	for {
		if isMeshcaRoot(filepath.Join(dir, "go.mod")) {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find bin dir: no github.com/meshca/meshca go.mod above the working directory; set MESHCA_BIN_DIR")
		}
		dir = parent
	}
}

func isMeshcaRoot(goMod string) bool {
	f, err := os.Open(goMod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == "github.com/meshca/meshca"
		}
	}
	return false
}

// Cluster is a running local control plane. Stop it when done.
type Cluster struct {
	cfg   Config
	pki   *pki
	ports ports

	procs []*Process

	restConfig *rest.Config
	client     kubernetes.Interface
	dynamic    dynamic.Interface
	mapper     *restmapper.DeferredDiscoveryRESTMapper

	stopOnce sync.Once
	stopErr  error
}

// ports are the loopback ports of one cluster.
type ports struct {
	etcdClient, etcdPeer, apiserver, controllerManager, scheduler, kubelet int
}

// Start generates (or reuses) the PKI and kubeconfigs under cfg.Dir, starts
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on
// free loopback ports and waits until each is ready, the kwok PortForward
// CRD and cfg.CRDs are established, and the default ServiceAccount exists.
// ctx bounds start-up only; the cluster runs until Stop. If any step fails,
// whatever was started is stopped again and the error carries the tail of the
// failing component's log.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if missing := cfg.Missing(); len(missing) > 0 {
		return nil, fmt.Errorf("start cluster: missing %s; build them with hack/controlplane.sh", strings.Join(missing, ", "))
	}
	for _, d := range []string{cfg.Dir, filepath.Join(cfg.Dir, "logs"), filepath.Join(cfg.Dir, "kwok")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create cluster directory %s: %w", d, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "etcd"), 0o700); err != nil {
		return nil, fmt.Errorf("create etcd directory: %w", err)
	}
	live, err := liveEntries(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if len(live) > 0 {
		return nil, fmt.Errorf("start cluster: %s already runs a cluster (%s pid %d); stop it first", cfg.Dir, live[0].name, live[0].pid)
	}
	p, err := ensurePKI(filepath.Join(cfg.Dir, "pki"), time.Now())
	if err != nil {
		return nil, err
	}
	free, err := FreePorts(6)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, pki: p, ports: ports{
		etcdClient: free[0], etcdPeer: free[1], apiserver: free[2],
		controllerManager: free[3], scheduler: free[4], kubelet: free[5],
	}}
	if err := c.start(ctx); err != nil {
		if stopErr := c.Stop(); stopErr != nil {
			cfg.Logf("stop after failed start: %v", stopErr)
		}
		return nil, fmt.Errorf("start cluster in %s: %w", cfg.Dir, err)
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	cfg := c.cfg
	began := time.Now()
	server := fmt.Sprintf("https://127.0.0.1:%d", c.ports.apiserver)
	for name, cert := range map[string]string{
		"admin": adminName, ControllerManager: controllerMgrName, Scheduler: schedulerName, Kwok: kwokClientName,
	} {
		if err := writeKubeconfig(kubeconfigPath(cfg.Dir, name), server, c.pki, cert); err != nil {
			return err
		}
	}
	if err := c.writeKwokConfig(); err != nil {
		return err
	}
	rc, err := restConfigFor(server, c.pki)
	if err != nil {
		return err
	}
	c.restConfig = rc
	if c.client, err = kubernetes.NewForConfig(rc); err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	if c.dynamic, err = dynamic.NewForConfig(rc); err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.client.Discovery()))

	probe, err := c.probeClient()
	if err != nil {
		return err
	}

	etcd, err := c.launch(Etcd, c.etcdArgs(), nil)
	if err != nil {
		return err
	}
	if err := c.waitReady(ctx, etcd, func(ctx context.Context) error {
		body, err := httpGet(ctx, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/health", c.ports.etcdClient))
		if err == nil && !strings.Contains(body, `"health":"true"`) {
			err = fmt.Errorf("unhealthy: %s", body)
		}
		return err
	}); err != nil {
		return err
	}
	cfg.Logf("etcd ready after %v", time.Since(began).Round(time.Millisecond))

	apiserver, err := c.launch(APIServer, c.apiserverArgs(), nil)
	if err != nil {
		return err
	}
	if err := c.waitReady(ctx, apiserver, func(ctx context.Context) error {
		_, err := httpGet(ctx, probe.admin, server+"/readyz")
		return err
	}); err != nil {
		return err
	}
	cfg.Logf("kube-apiserver ready after %v", time.Since(began).Round(time.Millisecond))

	cm, err := c.launch(ControllerManager, c.controllerManagerArgs(), nil)
	if err != nil {
		return err
	}
	sched, err := c.launch(Scheduler, c.schedulerArgs(), nil)
	if err != nil {
		return err
	}
	// kwok watches PortForward objects from the start: its CRD comes first.
	if err := c.ApplyYAML(ctx, cfg.asset(KwokPortForwardCRD)); err != nil {
		return err
	}
	// KWOK_WORKDIR keeps kwok away from a ~/.kwok/kwok.yaml of the user.
	kwok, err := c.launch(Kwok, c.kwokArgs(), []string{"KWOK_WORKDIR=" + filepath.Join(cfg.Dir, "kwok")})
	if err != nil {
		return err
	}
	for _, file := range cfg.CRDs {
		if err := c.ApplyYAML(ctx, cfg.asset(file)); err != nil {
			return err
		}
	}
	cfg.Logf("CRDs established after %v", time.Since(began).Round(time.Millisecond))
	for _, w := range []struct {
		p   *Process
		url string
	}{
		{cm, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.ports.controllerManager)},
		{sched, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.ports.scheduler)},
		{kwok, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.ports.kubelet)},
	} {
		if err := c.waitReady(ctx, w.p, func(ctx context.Context) error {
			_, err := httpGet(ctx, probe.anonymous, w.url)
			return err
		}); err != nil {
			return err
		}
		cfg.Logf("%s ready after %v", w.p.name, time.Since(began).Round(time.Millisecond))
	}
	// Pods are rejected until the service-account controller has created
	// the namespace's default ServiceAccount; wait for it in "default".
	if err := c.waitReady(ctx, cm, func(ctx context.Context) error {
		_, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("wait for serviceaccount default/default: %w", err)
	}
	cfg.Logf("control plane ready after %v", time.Since(began).Round(time.Millisecond))
	return nil
}

// launch starts one component and records it in the pid file.
func (c *Cluster) launch(name string, args, env []string) (*Process, error) {
	p, err := StartProcess(ProcessSpec{
		Name: name, Exe: c.Binary(binaries[name]), Args: args, Env: env,
		Dir: c.cfg.Dir, LogPath: c.LogPath(name), Detach: c.cfg.Detach,
	})
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	if err := writePIDFile(c.cfg.Dir, c.procs); err != nil {
		return nil, err
	}
	return p, nil
}

// waitReady polls check until it succeeds, the process exits, or the start
// timeout passes; failures carry the component's log tail.
func (c *Cluster) waitReady(ctx context.Context, p *Process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		last = check(attempt)
		cancelAttempt()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during start-up (%w)\n%s", p.name, p.Err(), p.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w (last check: %w)\n%s", p.name, c.cfg.StartTimeout, ctx.Err(), last, p.LogTail())
		case <-tick.C:
		}
	}
}

// probeClients are the HTTP clients readiness checks use.
type probeClients struct {
	admin     *http.Client // trusts the cluster CA, presents the admin certificate
	anonymous *http.Client // trusts the cluster CA only
}

func (c *Cluster) probeClient() (probeClients, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.pki.caPEM)
	admin, err := tls.LoadX509KeyPair(c.pki.certPath(adminName), c.pki.keyPath(adminName))
	if err != nil {
		return probeClients{}, fmt.Errorf("load admin certificate: %w", err)
	}
	mk := func(certs []tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		}}
	}
	return probeClients{admin: mk([]tls.Certificate{admin}), anonymous: mk(nil)}, nil
}

// httpGet returns the body of a 200 response, or an error.
func httpGet(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// FreePorts finds n distinct free loopback ports, for the cluster's
// components and the sandbox's istiod, by listening on them and closing the
// listeners. Another process may still take one in between; the component
// then fails to bind and reports it.
func FreePorts(n int) ([]int, error) {
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	// Ports are chosen below the kernel's ephemeral range, so that no port
	// the kernel hands out meanwhile (a listener on port 0 of a simulated
	// proxy, an outgoing connection) can take one before the component
	// that gets it binds it: with several sandboxes starting at once that
	// race made components exit with "address already in use".
	lo, hi := belowEphemeral()
	seen := map[int]bool{}
	var out []int
	for tries := 0; len(out) < n && tries < 200*n; tries++ {
		p := lo + rand.IntN(hi-lo+1)
		if seen[p] {
			continue
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		listeners = append(listeners, l)
		out = append(out, p)
	}
	for len(out) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		listeners = append(listeners, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// belowEphemeral is the range FreePorts picks from: the 12,000 ports below
// the kernel's ephemeral range (net.ipv4.ip_local_port_range; 32768 when
// it cannot be read), never below 1024.
func belowEphemeral() (lo, hi int) {
	low := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				low = v
			}
		}
	}
	return max(1024, low-12000), low - 1
}

func (c *Cluster) pkiFile(name string) string { return filepath.Join(c.pki.dir, name) }

func (c *Cluster) etcdArgs() []string {
	client := fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdClient)
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdPeer)
	return []string{
		"--name=sandbox",
		"--data-dir=" + filepath.Join(c.cfg.Dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=sandbox=" + peer,
		// A throw-away test store: durability is not worth the fsyncs.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}
}

func (c *Cluster) apiserverArgs() []string {
	return []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdClient),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.ports.apiserver),
		// The loopback advertise address cannot be reconciled into the
		// kubernetes Service endpoints.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + c.pki.certPath(apiserverName),
		"--tls-private-key-file=" + c.pki.keyPath(apiserverName),
		"--client-ca-file=" + c.pki.certPath(caName),
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pkiFile(serviceAccountPubKey),
		"--service-account-signing-key-file=" + c.pkiFile(serviceAccountKey),
		"--service-cluster-ip-range=" + serviceClusterIPRange,
		// Port-forward and logs go apiserver -> kwok's fake kubelet on 127.0.0.1.
		"--kubelet-client-certificate=" + c.pki.certPath(kubeletClientName),
		"--kubelet-client-key=" + c.pki.keyPath(kubeletClientName),
		"--kubelet-certificate-authority=" + c.pki.certPath(caName),
		// kwok nodes carry their name as Hostname address, which does not
		// resolve; their InternalIP is 127.0.0.1.
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		"--allow-privileged=true",
		"--profiling=false",
	}
}

func (c *Cluster) controllerManagerArgs() []string {
	return []string{
		"--kubeconfig=" + kubeconfigPath(c.cfg.Dir, ControllerManager),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.ports.controllerManager),
		"--tls-cert-file=" + c.pki.certPath(controllerMgrName),
		"--tls-private-key-file=" + c.pki.keyPath(controllerMgrName),
		"--service-account-private-key-file=" + c.pkiFile(serviceAccountKey),
		"--root-ca-file=" + c.pki.certPath(caName),
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file=" + c.pki.certPath(caName),
		"--cluster-signing-key-file=" + c.pki.keyPath(caName),
		"--cluster-name=" + contextName,
		// 1.37 controller names; an unknown name is fatal. The
		// node-lifecycle controller stays: it removes the not-ready taint
		// from new nodes.
		"--controllers=*,-node-ipam-controller,-persistentvolume-binder-controller," +
			"-persistentvolume-attach-detach-controller,-persistentvolume-expander-controller," +
			"-ttl-controller,-horizontal-pod-autoscaler-controller",
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--profiling=false",
	}
}

func (c *Cluster) schedulerArgs() []string {
	return []string{
		"--kubeconfig=" + kubeconfigPath(c.cfg.Dir, Scheduler),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.ports.scheduler),
		"--tls-cert-file=" + c.pki.certPath(schedulerName),
		"--tls-private-key-file=" + c.pki.keyPath(schedulerName),
		"--profiling=false",
	}
}

func (c *Cluster) kwokArgs() []string {
	return []string{
		"--kubeconfig=" + kubeconfigPath(c.cfg.Dir, Kwok),
		"--config=" + filepath.Join(c.cfg.Dir, "kwok", "kwok.yaml"),
		"--manage-nodes-with-annotation-selector=" + KwokNodeAnnotation + "=fake",
		"--node-ip=127.0.0.1",
		"--node-port=" + strconv.Itoa(c.ports.kubelet),
		"--server-address=" + fmt.Sprintf("127.0.0.1:%d", c.ports.kubelet),
		"--tls-cert-file=" + c.pki.certPath(kwokKubeletName),
		"--tls-private-key-file=" + c.pki.keyPath(kwokKubeletName),
		"--enable-crds=PortForward",
		// Nodes renew a Lease in kube-node-lease as a kubelet does; without
		// it the node-lifecycle controller marks every node NotReady ~50 s
		// after start, and every pod with it.
		"--node-lease-duration-seconds=40",
		"--cidr=" + podCIDR,
	}
}

// Stop stops the components in reverse start order (kwok, scheduler and
// controller-manager together, then the apiserver, then etcd): SIGTERM to
// each process group, SIGKILL after Config.StopGrace, and a wait on every
// process, so none is left behind. It removes the pid file. The error
// reports components that had exited on their own before Stop (with their
// log tails) or had to be killed. Stop is idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		tiers := [][]string{{Kwok, Scheduler, ControllerManager}, {APIServer}, {Etcd}}
		for _, tier := range tiers {
			var wg sync.WaitGroup
			var mu sync.Mutex
			for _, p := range c.procs {
				if !slices.Contains(tier, p.name) {
					continue
				}
				wg.Go(func() {
					if err := p.Stop(c.cfg.StopGrace); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
		}
		if err := os.Remove(filepath.Join(c.cfg.Dir, PIDFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pid file: %w", err))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// Dir returns the cluster's directory (Config.Dir, absolute).
func (c *Cluster) Dir() string { return c.cfg.Dir }

// Kubeconfig returns the path of the admin kubeconfig (user in
// system:masters) under Dir.
func (c *Cluster) Kubeconfig() string { return kubeconfigPath(c.cfg.Dir, "admin") }

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Dynamic returns an admin dynamic client.
func (c *Cluster) Dynamic() dynamic.Interface { return c.dynamic }

// Pids returns the process id of each started component, keyed by component
// name (Etcd, APIServer, ...). The same list is in Dir/pids for StopDir.
func (c *Cluster) Pids() map[string]int {
	out := make(map[string]int, len(c.procs))
	for _, p := range c.procs {
		out[p.name] = p.Pid()
	}
	return out
}

// Binary returns the path of an executable in BinDir, e.g. Binary("pilot-discovery").
func (c *Cluster) Binary(name string) string { return filepath.Join(c.cfg.BinDir, name) }

// LogPath returns the log file of a component (Etcd, APIServer, ...).
func (c *Cluster) LogPath(component string) string {
	return filepath.Join(c.cfg.Dir, "logs", component+".log")
}
