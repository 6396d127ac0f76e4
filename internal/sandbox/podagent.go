package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshca/meshca/internal/sandbox/cluster"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// What backs the envoy pods (Options.Agent).
const (
	// AgentReal runs the real pilot-agent (built from the istio pin in
	// tools/) for every envoy pod, with the envoy stand-in
	// (internal/sandbox/envoystub) as its envoy binary.
	AgentReal = "real"
	// AgentSimulated runs the in-process simulated istio-agent
	// (mesh.Agent).
	AgentSimulated = "simulated"
)

// DefaultRootCertVolumeDelay is how long a ConfigMap change takes to reach
// a real agent's mounted root-cert.pem by default. kubelet refreshes
// ConfigMap volumes on its sync period plus its cache TTL (up to about a
// minute and a half with the defaults); the sandbox uses a shorter, still
// visible delay that tests can change.
const DefaultRootCertVolumeDelay = 5 * time.Second

// Labels of the parts of a real-agent pod, wherever they are shown.
const (
	agentLabel = "pilot-agent (real, built from the istio pin)"
	envoyLabel = "envoy (simulated stand-in: meshca envoystub)"
)

// agentLogLevel is the agent's --log_output_level: info, plus debug for the
// scopes that log a PCDS trust-bundle update ("xdsproxy" receives it,
// "cache" applies it), as sidecar.istio.io/agentLogLevel would set.
const agentLogLevel = "default:info,xdsproxy:debug,cache:debug"

// stubEventLog is the envoy stand-in's event log, in the pod's directory.
const stubEventLog = "envoystub-events.jsonl"

// agentPod is the kubelet side of one envoy pod backed by the real
// pilot-agent: its working directory (the pod's filesystem), the process,
// and the ports it was given.
type agentPod struct {
	dir        string
	proc       *cluster.Process
	adminPort  int
	statusPort int
	// link is a short directory holding a symlink to the pod's SDS
	// socket directory.
	link   string
	cancel context.CancelFunc
	// rootMu serialises the updates of the mounted root-cert.pem.
	rootMu sync.Mutex
	// identity is the pod's SPIFFE identity; csr follows the agent's
	// failed-CSR counter for the probe.
	identity string
	csr      csrWatch
}

// cleanup stops the process of a pod that failed to start and removes the
// socket link.
func (a *agentPod) cleanup() {
	_ = a.proc.Stop(2 * time.Second)
	if a.link != "" {
		_ = os.RemoveAll(a.link)
	}
}

// exited reports whether the pod's pilot-agent process has exited.
func (a *agentPod) exited() bool {
	select {
	case <-a.proc.Done():
		return true
	default:
		return false
	}
}

// rootCertDir is where the istio-ca-root-cert volume is mounted.
func (a *agentPod) rootCertDir() string {
	return filepath.Join(a.dir, "var", "run", "secrets", "istio")
}

// healthy is the kubelet's readiness probe of the istio-proxy container:
// the agent's /healthz/ready on its status port (which asks envoy's admin
// in turn).
func (a *agentPod) healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", a.statusPort), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pilot-agent /healthz/ready: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pilot-agent /healthz/ready: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// startRealAgent plays kubelet for an envoy pod whose istio-proxy container
// is the real pilot-agent: it lays out the pod's filesystem in its own
// working directory (projected istio-ca token, istio-ca-root-cert volume,
// mesh config, envoy bootstrap template of the image), starts pilot-agent
// with the env of the pod spec and the ports of its envoy stand-in's
// listeners, and gives the probe its view of the pod (mesh.AgentProxy).
func (d *dataPlane) startRealAgent(ctx context.Context, pod *corev1.Pod, kind podKind) error {
	key := pod.Namespace + "/" + pod.Name
	env, _, grace, trust, err := d.podStart(pod)
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	sa, mk := envoyIdentity(pod, kind)
	stub, err := d.r.envoyStub()
	if err != nil {
		return err
	}
	tmpl, err := d.r.bootstrapTemplate()
	if err != nil {
		return err
	}
	ap := &agentPod{dir: filepath.Join(d.r.opts.Dir, "pods", pod.Namespace, pod.Name)}
	if err := os.RemoveAll(ap.dir); err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	tok, err := d.r.token(ctx, pod.Namespace, sa)
	if err != nil {
		return err
	}
	labels, annotations := downward(pod.Labels), downward(pod.Annotations)
	for dir, files := range map[string]map[string][]byte{
		filepath.Join("var", "run", "secrets", "tokens"): {"istio-token": []byte(tok)},
		filepath.Join("var", "run", "secrets", "istio"):  {"root-cert.pem": trust},
		filepath.Join("etc", "istio", "config"):          {"mesh": []byte(d.r.meshConfig())},
		filepath.Join("etc", "istio", "pod"):             {"labels": labels, "annotations": annotations},
		filepath.Join("var", "lib", "istio", "envoy"):    {"envoy_bootstrap_tmpl.json": tmpl},
	} {
		if _, err := projectVolume(filepath.Join(ap.dir, dir), files); err != nil {
			return fmt.Errorf("%s %s: %w", kind, key, err)
		}
	}
	for _, dir := range []string{filepath.Join("etc", "istio", "proxy"), filepath.Join("var", "run", "secrets", "workload-spiffe-uds")} {
		if err := os.MkdirAll(filepath.Join(ap.dir, dir), 0o700); err != nil {
			return fmt.Errorf("%s %s: %w", kind, key, err)
		}
	}
	ports, err := cluster.FreePorts(4)
	if err != nil {
		return err
	}
	ap.adminPort, ap.statusPort = ports[0], ports[1]
	procEnv, err := d.agentEnv(pod, env, sa, stub, ap.dir, ports)
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	args := expandArgs(containerArgs(pod, proxyContainer), procEnv)
	args = append(args, "--log_output_level="+agentLogLevel)
	ap.proc, err = cluster.StartProcess(cluster.ProcessSpec{
		Name: "pilot-agent-" + pod.Namespace + "-" + pod.Name, Exe: d.r.cluster.Binary("pilot-agent"),
		Args: args, Env: procEnv, Dir: ap.dir, LogPath: filepath.Join(ap.dir, "pilot-agent.log"),
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	// A unix socket path is limited to 108 bytes: the agent dials its own
	// relative to its working directory; the probe reaches it through a
	// short symlink.
	if ap.link, err = os.MkdirTemp("", "sds"); err != nil {
		_ = ap.proc.Stop(2 * time.Second)
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	if err := os.Symlink(filepath.Join(ap.dir, "var", "run", "secrets", "workload-spiffe-uds"), filepath.Join(ap.link, "uds")); err != nil {
		ap.cleanup()
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	e, err := mesh.StartAgentProxy(mesh.AgentProxyOptions{
		Kind: mk, Namespace: pod.Namespace, Pod: pod.Name, Node: pod.Spec.NodeName,
		Identity:  mesh.Identity{TrustDomain: TrustDomain, Namespace: pod.Namespace, ServiceAccount: sa},
		SDSSocket: filepath.Join(ap.link, "uds", "socket"),
		EventLog:  filepath.Join(ap.dir, stubEventLog),
		Exited:    ap.proc.Done(),
		Logger:    slog.Default().With(kind.String(), key),
	})
	if err != nil {
		ap.cleanup()
		return fmt.Errorf("%s %s: %w", kind, key, err)
	}
	// Pod port 15000 is envoy's admin: the stand-in's, as the bootstrap
	// the agent rendered told it.
	if err := d.r.cluster.ForwardPort(ctx, pod.Namespace, pod.Name, adminPort, ap.adminPort); err != nil {
		e.Stop()
		ap.cleanup()
		return err
	}
	var pctx context.Context
	pctx, ap.cancel = context.WithCancel(d.r.ctx)
	go d.refreshToken(pctx, ap, pod.Namespace, sa)
	target := string(mk) + "/" + pod.Namespace + "/" + workloadOf(pod)
	p := &proxyPod{kind: mk, pod: key, ns: pod.Namespace, target: target, started: time.Now(), grace: grace, e: e, agent: ap}
	ap.identity = mesh.Identity{TrustDomain: TrustDomain, Namespace: pod.Namespace, ServiceAccount: sa}.String()
	go d.watchAgentCSRs(pctx, p)
	d.add(p, mesh.Endpoint{Kind: mk, Name: pod.Namespace + "/" + workloadOf(pod), Node: pod.Spec.NodeName})
	d.r.opts.Logf("%s %s: %s (pid %d, status port %d) with %s (admin port %d)", kind, key, agentLabel, ap.proc.Pid(), ap.statusPort, envoyLabel, ap.adminPort)
	d.r.watchReady(pod, p)
	return nil
}

// agentEnv is the environment of the istio-proxy container as kubelet would
// give it: the pod spec's literal env, the downward-API values of a real
// injected or gateway pod, and what the pod's image and network would
// provide here (the istiod address on loopback with the name its
// certificate carries, envoy's binary and the pod's own ports).
func (d *dataPlane) agentEnv(pod *corev1.Pod, env map[string]string, sa, stub, dir string, ports []int) ([]string, error) {
	out := map[string]string{
		"POD_NAME":        pod.Name,
		"POD_NAMESPACE":   pod.Namespace,
		"SERVICE_ACCOUNT": sa,
		"NODE_NAME":       pod.Spec.NodeName,
		// Every pod of the sandbox lives on loopback.
		"INSTANCE_IP":           "127.0.0.1",
		"HOST_IP":               "127.0.0.1",
		"ISTIO_META_CLUSTER_ID": d.r.opts.clusterID(),
		"TRUST_DOMAIN":          TrustDomain,
		"JWT_POLICY":            "third-party-jwt",
		"PILOT_CERT_PROVIDER":   "istiod",
		// No CA_ADDR: the CA is the discovery address, and only then does
		// ISTIOD_SAN name the certificate istiod serves on loopback.
		"ISTIOD_SAN":            mesh.DefaultServerName,
		"ENVOY_STATUS_PORT":     fmt.Sprint(ports[2]),
		"ENVOY_PROMETHEUS_PORT": fmt.Sprint(ports[3]),
		// The envoy stand-in's inbound listener (where the probe dials),
		// its outbound listener (through which the pod originates the
		// probe's connections) and its event log; see
		// mesh.StartEnvoyInbound and mesh.StartEnvoyOutbound. It binds
		// the listeners on any free port and names them in its log: a
		// port chosen here could be taken by another process before the
		// stand-in starts.
		mesh.EnvStubInbound:  "127.0.0.1:0",
		mesh.EnvStubOutbound: "127.0.0.1:0",
		mesh.EnvStubEventLog: filepath.Join(dir, stubEventLog),
		"PATH":               os.Getenv("PATH"),
	}
	for k, v := range env {
		out[k] = v
	}
	for k, v := range fieldEnv(pod, proxyContainer) {
		out[k] = v
	}
	// The injection names istiod by its Service (CA_ADDR
	// istiod.istio-system.svc:15012), which only the cluster's DNS resolves.
	// Here the Service is the loopback front the discovery address points
	// at, and the agent verifies istiod's certificate by ISTIOD_SAN only
	// when CA_ADDR is unset.
	if host, _, _ := strings.Cut(out["CA_ADDR"], ":"); host == IstiodName+"."+IstioNamespace+".svc" {
		delete(out, "CA_ADDR")
	}
	// PROXY_CONFIG overlays the mesh's defaultConfig; the pod's own value
	// (an injected one) is kept and the sandbox's addresses and ports are
	// laid over it.
	pc := map[string]any{}
	if v := env["PROXY_CONFIG"]; v != "" {
		if err := json.Unmarshal([]byte(v), &pc); err != nil {
			return nil, fmt.Errorf("env PROXY_CONFIG of container %s: %w", proxyContainer, err)
		}
	}
	pc["discoveryAddress"] = d.r.svc.Addr()
	pc["binaryPath"] = stub
	pc["proxyAdminPort"] = ports[0]
	pc["statusPort"] = ports[1]
	raw, err := json.Marshal(pc)
	if err != nil {
		return nil, err
	}
	out["PROXY_CONFIG"] = string(raw)
	list := make([]string, 0, len(out))
	for k, v := range out {
		list = append(list, k+"="+v)
	}
	sort.Strings(list)
	return list, nil
}

// refreshToken renews the projected istio-ca token before it expires, as
// kubelet rotates projected service-account tokens at 80% of their life.
func (d *dataPlane) refreshToken(ctx context.Context, ap *agentPod, ns, sa string) {
	t := time.NewTicker(45 * time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		tok, err := d.r.token(ctx, ns, sa)
		if err != nil {
			slog.Warn("sandbox: refresh istio-token", "pod", ap.dir, "err", err)
			continue
		}
		if _, err := projectVolume(filepath.Join(ap.dir, "var", "run", "secrets", "tokens"), map[string][]byte{"istio-token": []byte(tok)}); err != nil {
			slog.Warn("sandbox: refresh istio-token", "pod", ap.dir, "err", err)
		}
	}
}

// updateRootCertVolume projects new root-cert.pem bytes into a real agent's
// istio-ca-root-cert volume after the kubelet delay.
func (d *dataPlane) updateRootCertVolume(p *proxyPod, pem []byte) {
	delay := max(d.r.opts.RootCertVolumeDelay, 0)
	time.AfterFunc(delay, func() {
		p.agent.rootMu.Lock()
		defer p.agent.rootMu.Unlock()
		if _, err := projectVolume(p.agent.rootCertDir(), map[string][]byte{"root-cert.pem": pem}); err != nil {
			slog.Warn("sandbox: istio-ca-root-cert volume", "pod", p.pod, "err", err)
		}
	})
}

// stopAgent ends a real agent pod as kubelet does: SIGTERM to pilot-agent
// alone (it drains its envoy, waits its terminationDrainDuration and ends
// it), then, once the agent has exited or grace has passed, whatever is
// left of the pod's processes.
func (p *proxyPod) stopAgent(grace time.Duration) {
	if p.agent == nil {
		return
	}
	p.agent.cancel()
	if err := p.agent.proc.Terminate(); err != nil {
		slog.Debug("sandbox: terminate pilot-agent", "pod", p.pod, "err", err)
	}
	t := time.NewTimer(grace)
	select {
	case <-p.agent.proc.Done():
	case <-t.C:
	}
	t.Stop()
	if err := p.agent.proc.Stop(time.Second); err != nil {
		slog.Debug("sandbox: pilot-agent stopped", "pod", p.pod, "err", err)
	}
	_ = os.RemoveAll(p.agent.link)
}

// fieldEnv resolves the downward-API env of a container (fieldRef) the
// way kubelet does, with the sandbox's loopback addresses for the pod and
// host IPs; resource limits are left out (the sandbox sets none).
func fieldEnv(pod *corev1.Pod, container string) map[string]string {
	out := map[string]string{}
	for _, c := range pod.Spec.Containers {
		if c.Name != container {
			continue
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
				continue
			}
			path := e.ValueFrom.FieldRef.FieldPath
			switch {
			case path == "metadata.name":
				out[e.Name] = pod.Name
			case path == "metadata.namespace":
				out[e.Name] = pod.Namespace
			case path == "spec.serviceAccountName":
				out[e.Name] = pod.Spec.ServiceAccountName
			case path == "spec.nodeName":
				out[e.Name] = pod.Spec.NodeName
			case path == "status.podIP", path == "status.hostIP", path == "status.podIPs", path == "status.hostIPs":
				out[e.Name] = "127.0.0.1"
			case strings.HasPrefix(path, "metadata.labels['"):
				out[e.Name] = pod.Labels[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.labels['"), "']")]
			case strings.HasPrefix(path, "metadata.annotations['"):
				out[e.Name] = pod.Annotations[strings.TrimSuffix(strings.TrimPrefix(path, "metadata.annotations['"), "']")]
			}
		}
	}
	return out
}

// downward renders labels or annotations as the downward API volume does:
// key="value" lines, sorted.
func downward(m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return []byte(b.String())
}

// containerArgs returns the args of a container of pod.
func containerArgs(pod *corev1.Pod, name string) []string {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return append([]string(nil), c.Args...)
		}
	}
	return nil
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs expands $(VAR) references in args from env ("K=V" entries) as
// kubelet does; unknown references stay as written.
func expandArgs(args, env []string) []string {
	vals := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = varRef.ReplaceAllStringFunc(a, func(m string) string {
			if v, ok := vals[m[2:len(m)-1]]; ok {
				return v
			}
			return m
		})
	}
	return out
}

// envoyStub returns the envoy stand-in binary: bin/envoystub when built,
// else built once into the sandbox directory from the module source.
func (r *runtime) envoyStub() (string, error) {
	r.stubOnce.Do(func() {
		if p := filepath.Join(r.opts.BinDir, "envoystub"); fileExists(p) {
			r.stubPath = p
			return
		}
		root, err := moduleRoot()
		if err != nil {
			r.stubErr = fmt.Errorf("envoy stand-in: no %s and %w: build it with `go build -o bin/envoystub ./internal/sandbox/envoystub`", filepath.Join(r.opts.BinDir, "envoystub"), err)
			return
		}
		out := filepath.Join(r.opts.Dir, "bin", "envoystub")
		cmd := exec.Command("go", "build", "-o", out, "./internal/sandbox/envoystub")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			r.stubErr = fmt.Errorf("build the envoy stand-in: %w\n%s", err, b)
			return
		}
		r.stubPath = out
	})
	return r.stubPath, r.stubErr
}

// bootstrapTemplate returns envoy's bootstrap template as the proxyv2 image
// carries it at /var/lib/istio/envoy/envoy_bootstrap_tmpl.json.
func (r *runtime) bootstrapTemplate() ([]byte, error) {
	return r.istioFile("envoy_bootstrap.json", "tools/packaging/common/envoy_bootstrap.json")
}

// moduleRoot finds the meshca source tree from the working directory (tests
// and `go run` run inside it).
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the meshca source tree")
	}
	b, err := os.ReadFile(gomod)
	if err != nil || !strings.Contains(string(b), "module github.com/meshca/meshca\n") {
		return "", fmt.Errorf("not inside the meshca source tree (%s)", gomod)
	}
	return filepath.Dir(gomod), nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// agentPods lists the live pods backed by the real agent.
func (d *dataPlane) agentPods() []*proxyPod {
	d.mu.Lock()
	defer d.mu.Unlock()
	var pods []*proxyPod
	for _, p := range d.proxies {
		if p.agent != nil {
			pods = append(pods, p)
		}
	}
	return pods
}

// agentLogLines returns the lines of every live real agent's log that
// contain substr, each prefixed with its pod.
func (d *dataPlane) agentLogLines(substr string) []string {
	var out []string
	for _, p := range d.agentPods() {
		data, err := os.ReadFile(filepath.Join(p.agent.dir, "pilot-agent.log"))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			if strings.Contains(line, substr) {
				out = append(out, p.pod+": "+line)
			}
		}
	}
	sort.Strings(out)
	return out
}
