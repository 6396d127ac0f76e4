package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// stub is one running envoy stand-in.
type stub struct {
	boot *bootstrap
	log  *slog.Logger
	sds  *mesh.SDSWatch
	srv  *http.Server
	// statsSrv serves the bootstrap's prometheus stats listener.
	statsSrv *http.Server
	quit     chan struct{}
	once     sync.Once

	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Counters of the xDS updates accepted, as envoy's stats name them.
	cdsSuccess, ldsSuccess atomic.Uint64
	// draining is set by POST /drain_listeners: server.state becomes
	// DRAINING (1).
	draining atomic.Bool

	// inbound is the listener that serves the probe's handshakes with
	// what SDS gave; nil when the pod has no inbound port (env
	// mesh.EnvStubInbound unset).
	inbound *mesh.EnvoyInbound
	// outbound originates the probe's connections from this pod; nil
	// when the pod has no outbound port (mesh.EnvStubOutbound unset).
	outbound *mesh.EnvoyOutbound
	// creds are the parsed "default" certificate and "ROOTCA" roots.
	credMu sync.Mutex
	cert   *mesh.Certificate
	roots  []*x509.Certificate
}

func newStub(boot *bootstrap, log *slog.Logger) *stub {
	s := &stub{boot: boot, log: log, quit: make(chan struct{})}
	s.sds = mesh.NewSDSWatch(boot.sdsPath, boot.node.GetId(), log, func(sec mesh.SDSSecret) {
		log.Info("sds secret updated", "secret", sec.Name, "version", sec.Version)
		s.takeSecret(sec)
	})
	return s
}

// name is how reasons name this envoy: "envoy <namespace>/<pod>" from the
// pod env pilot-agent passes on, else its node ID.
func (s *stub) name() string {
	if ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"); ns != "" && pod != "" {
		return "envoy " + ns + "/" + pod
	}
	return "envoy " + s.boot.node.GetId()
}

// takeSecret parses a secret SDS pushed into what the inbound listener
// serves with; a secret that does not parse keeps the previous one, as
// envoy rejects an invalid update.
func (s *stub) takeSecret(sec mesh.SDSSecret) {
	switch sec.Name {
	case mesh.SecretDefault:
		c, err := sec.Certificate()
		if err != nil {
			s.log.Warn("sds secret rejected", "secret", sec.Name, "err", err)
			return
		}
		s.credMu.Lock()
		s.cert = c
		s.credMu.Unlock()
	case mesh.SecretRootCA:
		roots, err := sec.Roots()
		if err != nil {
			s.log.Warn("sds secret rejected", "secret", sec.Name, "err", err)
			return
		}
		s.credMu.Lock()
		s.roots = roots
		s.credMu.Unlock()
	}
}

// credentials are the inbound listener's: both secrets, or not ready.
func (s *stub) credentials() (*mesh.Certificate, []*x509.Certificate, bool) {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	return s.cert, s.roots, s.cert != nil && len(s.roots) > 0
}

func (s *stub) start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.boot.adminAddr)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", s.boot.adminAddr, err)
	}
	s.srv = &http.Server{Handler: s.mux(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server", "err", err)
		}
	}()
	if s.boot.statsAddr != "" {
		sl, err := net.Listen("tcp", s.boot.statsAddr)
		if err != nil {
			return fmt.Errorf("prometheus stats listener %s: %w", s.boot.statsAddr, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/stats/prometheus", s.statsPrometheus)
		s.statsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := s.statsSrv.Serve(sl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("prometheus stats listener", "err", err)
			}
		}()
	}
	if addr := os.Getenv(mesh.EnvStubInbound); addr != "" {
		s.inbound, err = mesh.StartEnvoyInbound(mesh.EnvoyInboundOptions{
			Name: s.name(), Addr: addr, EventLog: os.Getenv(mesh.EnvStubEventLog),
			Credentials: s.credentials, Now: now, Logger: s.log,
		})
		if err != nil {
			return err
		}
		s.log.Info("inbound listener serving with the agent's SDS secrets", "addr", s.inbound.Addr())
		if addr := os.Getenv(mesh.EnvStubOutbound); addr != "" {
			s.outbound, err = mesh.StartEnvoyOutbound(mesh.EnvoyOutboundOptions{
				Name: s.name(), Addr: addr, Credentials: s.credentials,
				Events: s.inbound, Now: now, Logger: s.log,
			})
			if err != nil {
				return err
			}
			s.log.Info("outbound listener connecting with the agent's SDS secrets", "addr", s.outbound.Addr())
		}
	}
	if err := s.sds.Start(); err != nil {
		return err
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.runADS(ctx)
	}()
	return nil
}

func (s *stub) close(reason string) {
	if s.outbound != nil {
		s.outbound.Close(reason)
	}
	if s.inbound != nil {
		s.inbound.Close(reason)
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.sds.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(sctx)
	if s.statsSrv != nil {
		_ = s.statsSrv.Shutdown(sctx)
	}
}

func (s *stub) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, r *http.Request) {
		body, err := mesh.RenderConfigDump(r.URL.Query().Get("mask") != "", s.boot.node.GetId(), s.boot.node.GetCluster(), now(), s.dumpSecrets())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		state := s.state()
		if state != "LIVE" {
			http.Error(w, state, http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, state)
	})
	mux.HandleFunc("/stats", s.stats)
	mux.HandleFunc("/stats/prometheus", s.statsPrometheus)
	mux.HandleFunc("/server_info", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, "{\"version\": %q, \"state\": %q}\n", label, s.state())
	})
	mux.HandleFunc("/drain_listeners", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		s.draining.Store(true)
		if s.inbound != nil {
			s.inbound.Drain()
		}
		s.log.Info("draining listeners", "query", r.URL.RawQuery)
		_, _ = fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		_, _ = fmt.Fprintln(w, "OK")
		s.once.Do(func() { close(s.quit) })
	})
	return mux
}

// state is server.state as envoy names it: LIVE once both secrets and the
// first CDS and LDS updates are in, DRAINING after /drain_listeners,
// INITIALIZING before.
func (s *stub) state() string {
	switch {
	case s.draining.Load():
		return "DRAINING"
	case s.initialized():
		return "LIVE"
	}
	return "INITIALIZING"
}

func (s *stub) initialized() bool {
	_, okCert := s.sds.Secret(mesh.SecretDefault)
	_, okRoot := s.sds.Secret(mesh.SecretRootCA)
	return okCert && okRoot && s.cdsSuccess.Load() > 0 && s.ldsSuccess.Load() > 0
}

// stats answers GET /stats with the counters the agent's readiness probe
// reads (server.state: 0 LIVE, 1 DRAINING, 3 INITIALIZING), filtered by the
// filter regexp as envoy does.
// statLine is one of the stats the stand-in keeps, by envoy's name.
type statLine struct {
	name  string
	gauge bool
	v     uint64
}

func (s *stub) statLines() []statLine {
	state := map[string]int{"LIVE": 0, "DRAINING": 1, "INITIALIZING": 3}[s.state()]
	workers := 0
	if s.initialized() {
		workers = 1
	}
	lines := []statLine{
		{"cluster_manager.cds.update_rejected", false, 0},
		{"cluster_manager.cds.update_success", false, s.cdsSuccess.Load()},
		{"listener_manager.lds.update_rejected", false, 0},
		{"listener_manager.lds.update_success", false, s.ldsSuccess.Load()},
		{"listener_manager.workers_started", true, uint64(workers)},
		{"server.state", true, uint64(state)},
	}
	if s.inbound != nil {
		// envoy's per-listener stats, under listener.<address>.
		st, pre := s.inbound.Stats(), "listener."+strings.ReplaceAll(s.inbound.Addr(), ":", "_")+"."
		lines = append(lines,
			statLine{pre + "downstream_cx_active", true, st.DownstreamCxActive},
			statLine{pre + "downstream_cx_total", false, st.DownstreamCxTotal},
			statLine{pre + "ssl.connection_error", false, st.SSLConnectError},
			statLine{pre + "ssl.fail_verify_error", false, st.SSLFailVerify},
			statLine{pre + "ssl.handshake", false, st.SSLHandshake},
		)
	}
	if s.outbound != nil {
		st, pre := s.outbound.Stats(), "listener."+strings.ReplaceAll(s.outbound.Addr(), ":", "_")+"."
		lines = append(lines,
			statLine{pre + "downstream_cx_active", true, st.DownstreamCxActive},
			statLine{pre + "downstream_cx_total", false, st.DownstreamCxTotal},
		)
	}
	return lines
}

// statsPrometheus is /stats/prometheus, on the admin port and on the
// bootstrap's prometheus stats listener: the same stats in the Prometheus
// text format with envoy's envoy_ prefix, which pilot-agent merges into its
// own /stats/prometheus.
func (s *stub) statsPrometheus(w http.ResponseWriter, _ *http.Request) {
	var b strings.Builder
	for _, l := range s.statLines() {
		name := "envoy_" + strings.ReplaceAll(l.name, ".", "_")
		typ := "counter"
		if l.gauge {
			typ = "gauge"
		}
		fmt.Fprintf(&b, "# TYPE %s %s\n%s{} %d\n", name, typ, name, l.v)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(b.String()))
}

func (s *stub) stats(w http.ResponseWriter, r *http.Request) {
	lines := s.statLines()
	var re *regexp.Regexp
	if f := r.URL.Query().Get("filter"); f != "" {
		var err error
		if re, err = regexp.Compile(f); err != nil {
			http.Error(w, "invalid filter regex", http.StatusBadRequest)
			return
		}
	}
	var b strings.Builder
	for _, l := range lines {
		if re == nil || re.MatchString(l.name) {
			fmt.Fprintf(&b, "%s: %d\n", l.name, l.v)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(b.String()))
}

// dumpSecrets is what SDS gave, as envoy's secrets dump shows it.
func (s *stub) dumpSecrets() []mesh.DumpSecret {
	var out []mesh.DumpSecret
	if c, ok := s.sds.Secret(mesh.SecretDefault); ok {
		out = append(out, mesh.DumpSecret{Name: c.Name, Version: c.Version, Updated: c.Updated, CertChainPEM: c.CertChain})
	}
	if r, ok := s.sds.Secret(mesh.SecretRootCA); ok {
		out = append(out, mesh.DumpSecret{Name: r.Name, Version: r.Version, Updated: r.Updated, TrustedCAPEM: r.TrustedCA})
	}
	return out
}
