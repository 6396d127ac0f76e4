package sandbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// istiod is one real pilot-discovery process backing one istiod pod. Its
// cacerts directory is a kubelet-style projection of the cacerts Secret and
// its mesh config one of the istio ConfigMap, so istiod's own file watchers
// see every change exactly as in a pod.
type istiod struct {
	pod      string
	dir      string
	env      map[string]string
	proc     *cluster.Process
	httpAddr string
	// webhookAddr serves the injection and validation webhooks (15017).
	webhookAddr string
	// CAAddr is the secure gRPC (CA and xDS) address, 15012 in a pod.
	CAAddr string
}

// istiodCAPort is istiod's secure gRPC port (CA and xDS) in a pod.
const istiodCAPort = 15012

// caPort is the local port of CAAddr.
func (d *istiod) caPort() int {
	_, port, _ := net.SplitHostPort(d.CAAddr)
	n, _ := strconv.Atoi(port)
	return n
}

// istiodOptions is what startIstiod needs from the sandbox.
type istiodOptions struct {
	binary     string
	runDir     string
	kubeconfig string
	cacerts    map[string][]byte
	mesh       string
}

// startIstiod starts pilot-discovery for pod with the env of its discovery
// container, and waits for /ready.
func startIstiod(ctx context.Context, pod *corev1.Pod, o istiodOptions) (*istiod, error) {
	dir := filepath.Join(o.runDir, "istiod", pod.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("istiod %s: %w", pod.Name, err)
	}
	if _, err := projectVolume(filepath.Join(dir, "etc", "cacerts"), o.cacerts); err != nil {
		return nil, err
	}
	if _, err := projectVolume(filepath.Join(dir, "etc", "istio", "config"), map[string][]byte{"mesh": []byte(o.mesh)}); err != nil {
		return nil, err
	}
	ports, err := cluster.FreePorts(5)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	d := &istiod{pod: pod.Name, dir: dir, env: podEnv(pod, "discovery"), httpAddr: addr(0), webhookAddr: addr(1), CAAddr: addr(3)}
	env := []string{
		"POD_NAMESPACE=" + pod.Namespace,
		"POD_NAME=" + pod.Name,
		"REVISION=default",
		"CLUSTER_ID=" + ClusterID,
		"PILOT_ENABLE_AMBIENT=true",
		"ROOT_CA_DIR=" + filepath.Join(dir, "etc", "cacerts"),
		"KUBECONFIG=" + o.kubeconfig,
		"ENABLE_CA_SERVER=true",
		// The API server reaches the webhooks as https://localhost:<port>:
		// istiod adds the name to its serving certificate.
		"ISTIOD_CUSTOM_HOST=" + injectorHost,
	}
	for k, v := range d.env {
		env = append(env, k+"="+v)
	}
	args := []string{"discovery",
		"--kubeconfig", o.kubeconfig,
		"--httpAddr", addr(0), "--httpsAddr", addr(1), "--grpcAddr", addr(2), "--secureGRPCAddr", addr(3), "--monitoringAddr", addr(4),
		"--meshConfig", filepath.Join(dir, "etc", "istio", "config", "mesh"),
		"--profile=false", "--shutdownDuration=1s",
	}
	d.proc, err = cluster.StartProcess(cluster.ProcessSpec{
		Name: "istiod-" + pod.Name, Exe: o.binary, Args: args, Env: env, Dir: dir,
		LogPath: filepath.Join(dir, "istiod.log"),
	})
	if err != nil {
		return nil, err
	}
	if err := d.waitReady(ctx, 60*time.Second); err != nil {
		_ = d.stop()
		return nil, err
	}
	return d, nil
}

func (d *istiod) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.httpAddr+"/ready", nil)
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-d.proc.Done():
			return fmt.Errorf("istiod %s exited during start-up:\n%s", d.pod, d.proc.LogTail())
		case <-ctx.Done():
			return fmt.Errorf("istiod %s not ready after %s:\n%s", d.pod, timeout, d.proc.LogTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// syncCACerts projects the cacerts Secret data into istiod's CA directory.
func (d *istiod) syncCACerts(data map[string][]byte) (bool, error) {
	return projectVolume(filepath.Join(d.dir, "etc", "cacerts"), data)
}

// syncMesh projects the mesh config.
func (d *istiod) syncMesh(mesh string) (bool, error) {
	return projectVolume(filepath.Join(d.dir, "etc", "istio", "config"), map[string][]byte{"mesh": []byte(mesh)})
}

func (d *istiod) stop() error { return d.proc.Stop(5 * time.Second) }

// logContains reports whether istiod's log holds s (used by tests to check
// what istiod said about a cacerts change).
func (d *istiod) logContains(s string) bool {
	data, err := os.ReadFile(filepath.Join(d.dir, "istiod.log"))
	return err == nil && strings.Contains(string(data), s)
}

// podEnv returns the literal env of a container of pod.
func podEnv(pod *corev1.Pod, container string) map[string]string {
	env := map[string]string{}
	for _, c := range pod.Spec.Containers {
		if c.Name != container {
			continue
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				env[e.Name] = e.Value
			}
		}
	}
	return env
}

// serviceProxy is the istiod Service: a local TCP listener that forwards each
// new connection to the newest ready istiod, as kube-proxy would spread them
// over the Service's ready endpoints.
type serviceProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	backend string
	wg      sync.WaitGroup
}

func newServiceProxy() (*serviceProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("istiod service: %w", err)
	}
	p := &serviceProxy{ln: ln}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *serviceProxy) Addr() string { return p.ln.Addr().String() }

// port is the Service's local port.
func (p *serviceProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *serviceProxy) setBackend(addr string) {
	p.mu.Lock()
	p.backend = addr
	p.mu.Unlock()
}

func (p *serviceProxy) serve() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		backend := p.backend
		p.mu.Unlock()
		go func() {
			defer func() { _ = conn.Close() }()
			if backend == "" {
				return
			}
			up, err := net.DialTimeout("tcp", backend, 2*time.Second)
			if err != nil {
				slog.Debug("istiod service: no backend", "backend", backend, "err", err)
				return
			}
			defer func() { _ = up.Close() }()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, conn); done <- struct{}{} }()
			go func() { _, _ = io.Copy(conn, up); done <- struct{}{} }()
			<-done
		}()
	}
}

func (p *serviceProxy) close() {
	_ = p.ln.Close()
	p.wg.Wait()
}
