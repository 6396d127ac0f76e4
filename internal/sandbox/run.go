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

	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/sandbox/cluster"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// Sandbox is a running proving ground.
type Sandbox struct {
	opts    Options
	cluster *cluster.Cluster
	rt      *runtime
	probe   *mesh.Probe
	cancel  context.CancelFunc
	done    chan struct{}
	control *http.Server
	started time.Time
}

// Start brings the whole sandbox up and returns once every proxy holds its
// certificates. On failure everything started so far is stopped.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	b, err := generateCA(opts.Dir, opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("sandbox CA: %w", err)
	}
	cfg := cluster.Config{Dir: filepath.Join(opts.Dir, "cluster"), BinDir: opts.BinDir, CRDs: []string{cluster.IstioCRDs}, Logf: opts.Logf}
	if missing := cfg.Missing(); len(missing) > 0 {
		return nil, fmt.Errorf("sandbox: control-plane binaries missing (%v): build them with `make controlplane` (about 9 minutes the first time)", missing)
	}
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{opts: opts, cluster: c, done: make(chan struct{}), started: t0}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	opts.Logf("control plane up in %s", time.Since(t0).Round(time.Millisecond))
	if err := linkKubeconfig(c.Kubeconfig(), filepath.Join(opts.Dir, KubeconfigFile)); err != nil {
		return nil, err
	}
	if err := c.AddNodes(ctx, opts.Nodes, "sandbox"); err != nil {
		return nil, err
	}
	opts.Logf("%d nodes ready", opts.Nodes)

	if s.rt, err = newRuntime(&s.opts, c); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		if err := s.rt.run(runCtx); err != nil {
			opts.Logf("sandbox runtime: %v", err)
		}
	}()
	if opts.ProbeInterval > 0 {
		if s.probe, err = mesh.NewProbe(mesh.ProbeOptions{Endpoints: s.rt.data.endpoints, Interval: opts.ProbeInterval}); err != nil {
			return nil, err
		}
		go s.probe.Run(runCtx)
	}

	namespaces := s.AppNamespaces()
	spec := installSpec{
		Workloads: opts.Workloads, CertTTL: opts.CertTTL.String(),
		MultiRoot: opts.MultiRoot, XDSAgent: opts.XDSAgent, ZtunnelVersion: opts.ZtunnelVersion,
		Bundle: b, AppNamespaces: namespaces, ServiceAccounts: opts.ServiceAccounts,
	}
	if err := install(ctx, c.Client(), spec); err != nil {
		return nil, err
	}
	if err := s.WaitReady(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	if s.probe != nil {
		s.probe.Reset()
	}
	opts.Logf("sandbox ready in %s", time.Since(t0).Round(time.Millisecond))
	if err := s.serveControl(); err != nil {
		return nil, err
	}
	return s, nil
}

// WaitReady waits until istiod serves, every ztunnel holds a certificate for
// each identity of its node, and every envoy proxy holds its certificate.
func (s *Sandbox) WaitReady(ctx context.Context, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		st, err := s.Status(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = st.pending()
		return last == "", nil
	})
	if err != nil {
		return fmt.Errorf("sandbox not ready after %s: %s", timeout, last)
	}
	return nil
}

// Stop stops the data plane, istiod and the control plane.
func (s *Sandbox) Stop() error {
	if s.control != nil {
		_ = s.control.Close()
	}
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	if s.rt != nil {
		s.rt.shutdown()
	}
	err := s.cluster.Stop()
	_ = os.Remove(filepath.Join(s.opts.Dir, StateFile))
	return err
}

// Dir is the sandbox directory.
func (s *Sandbox) Dir() string { return s.opts.Dir }

// Kubeconfig is the path of the admin kubeconfig.
func (s *Sandbox) Kubeconfig() string { return filepath.Join(s.opts.Dir, KubeconfigFile) }

// Client is an admin clientset.
func (s *Sandbox) Client() kubernetes.Interface { return s.cluster.Client() }

// Cluster is the underlying control plane.
func (s *Sandbox) Cluster() *cluster.Cluster { return s.cluster }

// Probe returns the mTLS probe's counters (zero when the probe is off).
func (s *Sandbox) Probe() mesh.Snapshot {
	if s.probe == nil {
		return mesh.Snapshot{}
	}
	return s.probe.Snapshot()
}

// ResetProbe zeroes the probe's counters.
func (s *Sandbox) ResetProbe() {
	if s.probe != nil {
		s.probe.Reset()
	}
}

// Held lists what every identity of every live simulated proxy holds now,
// read from the proxies themselves (not through their admin APIs).
func (s *Sandbox) Held() []HeldCert { return s.rt.data.held() }

// AppNamespaces are the ambient namespaces of the workloads and waypoints.
func (s *Sandbox) AppNamespaces() []string {
	out := make([]string, s.opts.AppNamespaces)
	for i := range out {
		out[i] = fmt.Sprintf("apps-%d", i)
	}
	return out
}

// IstiodLogContains reports whether a running istiod logged s.
func (s *Sandbox) IstiodLogContains(str string) bool { return s.rt.istiodLogContains(str) }

// CADir is where the sandbox keeps the CA material it installed (the root key
// stays here, never in the cluster).
func (s *Sandbox) CADir() string { return filepath.Join(s.opts.Dir, CADir) }

// Status is the JSON of `sandbox status`.
type Status struct {
	Dir        string        `json:"dir"`
	Kubeconfig string        `json:"kubeconfig"`
	Uptime     string        `json:"uptime"`
	Istiods    []string      `json:"istiods"`
	Proxies    []proxyStatus `json:"proxies"`
	Probe      mesh.Snapshot `json:"probe"`
}

// Status reports the sandbox's components and proxies.
func (s *Sandbox) Status(context.Context) (*Status, error) {
	st := &Status{Dir: s.opts.Dir, Kubeconfig: s.Kubeconfig(), Uptime: time.Since(s.started).Round(time.Second).String(), Probe: s.Probe()}
	s.rt.mu.Lock()
	st.Istiods = append(st.Istiods, s.rt.order...)
	s.rt.mu.Unlock()
	st.Proxies = s.rt.data.status()
	sort.Slice(st.Proxies, func(i, j int) bool { return st.Proxies[i].Pod < st.Proxies[j].Pod })
	return st, nil
}

// pending says what the sandbox still waits for, or "" when ready.
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
	_, _ = fmt.Fprintf(w, "sandbox %s (up %s)\n  kubeconfig %s\n  istiod     %v\n  probe      %d handshakes, %d failed since %s\n\n",
		st.Dir, st.Uptime, st.Kubeconfig, st.Istiods, st.Probe.Handshakes, st.Probe.Failures, st.Probe.Since.Format(time.RFC3339))
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
	return writeState(s.opts.Dir, &State{
		PID: os.Getpid(), Kubeconfig: s.Kubeconfig(), ControlAddr: ln.Addr().String(), Started: s.started, Ready: true,
		Nodes: s.opts.Nodes, Workloads: s.opts.Workloads, RootCA: filepath.Join(s.CADir(), "root"),
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func linkKubeconfig(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o600)
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
	if err := cluster.StopDir(filepath.Join(dir, "cluster"), 10*time.Second); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Join(dir, StateFile))
	return errors.Join(errs...)
}
