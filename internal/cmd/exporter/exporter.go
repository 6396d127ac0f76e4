// Package exporter holds `meshca exporter`: the Prometheus exporter of the
// mesh CA's certificates, the proxies' leafs and the rotation phase, for one
// or several clusters. Flags and serving only; what is read and published
// lives in internal/exporter.
package exporter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/exporter"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/verify"
)

type options struct {
	listen           string
	interval         time.Duration
	fleetInterval    time.Duration
	contexts         []string
	warnDays         int
	parallel         int
	timeout          time.Duration
	maxProxySeries   int
	aggregateProxies bool
}

// NewCmd returns `meshca exporter`.
func NewCmd(env *cli.Env) *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "exporter",
		Short: "Serve Prometheus metrics on the expiry of the mesh CA and of every proxy's certificates",
		Long: `Run a Prometheus exporter (in the cluster as a Deployment, see
deploy/exporter/, or from a workstation) that publishes on /metrics:

  meshca_ca_cert_not_after_seconds{cluster, source, role, fingerprint, subject}
      every root and intermediate of cacerts, of the istio-ca-root-cert
      ConfigMaps and of istiod's webhook caBundles (every root of a
      multi-root bundle is its own series); read every --interval
  meshca_proxy_cert_not_after_seconds{cluster, kind, namespace, pod, identity}
      the workload certificate of every identity every proxy holds,
      ztunnel's included; at most --max-proxy-series per cluster (the
      earliest to expire), or one per kind with --aggregate-proxies
  meshca_proxy_certs{cluster, kind, freshness}
      those certificates by freshness: ok, not_refreshing (past 60% of
      their lifetime), expired, not_yet_valid
  meshca_proxies{cluster, kind, state}
      the verdict of the fleet walk (as meshca verify) every --fleet-interval:
      match, stale, not_refreshing, expiring, unreadable, not_ready, empty
  meshca_rotation_phase{cluster, phase}, meshca_rotation_phase_written_timestamp_seconds
      from the rotation record (ConfigMap meshca-rotation)
  meshca_scrape_errors_total, meshca_last_scrape_timestamp_seconds,
  meshca_scrape_duration_seconds {cluster, stage}; Go and process metrics

/healthz answers while the process serves; /readyz once every cluster has
been read once. Repeat --context to watch several clusters; without it, the
current context (or the in-cluster config). The README documents each metric
and deploy/prometheus/ has the alert rules and a Grafana dashboard.`,
		Example: `  # In the cluster: kubectl apply -f deploy/exporter/
  # From a workstation, two clusters:
  meshca exporter --context east --context west --listen 127.0.0.1:9599`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), env)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", exporter.DefaultListen, "address to serve /metrics, /healthz and /readyz on")
	f.DurationVar(&o.interval, "interval", exporter.DefaultInterval, "how often to read cacerts, the ConfigMaps, the webhooks and the rotation record")
	f.DurationVar(&o.fleetInterval, "fleet-interval", exporter.DefaultFleetInterval, "how often to walk the fleet (one port-forward per proxy)")
	f.StringArrayVar(&o.contexts, "context", nil, "kubeconfig context of a cluster to watch; repeat for several clusters")
	f.IntVar(&o.warnDays, "warn-days", verify.DefaultWarnDays, "a proxy holding a root or intermediate that expires within this many days counts as expiring; 0 disables")
	f.IntVar(&o.parallel, "parallel", verify.DefaultParallel, "how many proxies the fleet walk reads at once")
	f.DurationVar(&o.timeout, "timeout", verify.DefaultTimeout, "time allowed to read each proxy")
	f.IntVar(&o.maxProxySeries, "max-proxy-series", exporter.DefaultMaxProxySeries, "at most this many meshca_proxy_cert_not_after_seconds series per cluster (the earliest to expire are kept)")
	f.BoolVar(&o.aggregateProxies, "aggregate-proxies", false, "publish one meshca_proxy_cert_not_after_seconds series per cluster and kind (the earliest expiry) instead of one per pod and identity")
	return cmd
}

func (o *options) validate() error {
	switch {
	case o.interval <= 0 || o.fleetInterval <= 0:
		return cli.Usage("--interval and --fleet-interval must be positive")
	case o.warnDays < 0:
		return cli.Usage("--warn-days must not be negative (0 disables the expiry warning)")
	case o.parallel < 1:
		return cli.Usage("--parallel must be at least 1")
	case o.timeout <= 0:
		return cli.Usage("--timeout must be positive")
	case o.maxProxySeries < 1:
		return cli.Usage("--max-proxy-series must be at least 1 (or use --aggregate-proxies)")
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return cli.Usage("--listen %q: want host:port or :port (%v)", o.listen, err)
	}
	return nil
}

// clusters connects to each --context (or the current one).
func (o *options) clusters(env *cli.Env) ([]exporter.Cluster, error) {
	contexts := o.contexts
	if len(contexts) == 0 {
		contexts = []string{""}
	}
	var out []exporter.Cluster
	for _, name := range contexts {
		flags := withContext(env.Kube, name)
		client, err := kube.NewClient(flags)
		if err != nil {
			return nil, err
		}
		if name == "" {
			name = "in-cluster"
			if raw, err := flags.ToRawKubeConfigLoader().RawConfig(); err == nil && raw.CurrentContext != "" {
				name = raw.CurrentContext
			}
		}
		lo := verify.LiveOptions{Timeout: o.timeout}
		if client.NamespaceExplicit {
			lo.Namespace = client.Namespace
		}
		src, err := verify.LiveSource(client, lo)
		if err != nil {
			return nil, err
		}
		out = append(out, exporter.Cluster{Name: name, Source: src})
	}
	return out, nil
}

// withContext copies the global kube flags with another context.
func withContext(base *genericclioptions.ConfigFlags, context string) *genericclioptions.ConfigFlags {
	f := genericclioptions.NewConfigFlags(true)
	f.KubeConfig, f.Namespace, f.Context = base.KubeConfig, base.Namespace, base.Context
	if context != "" {
		f.Context = &context
	}
	return f
}

func (o *options) run(ctx context.Context, env *cli.Env) error {
	clusters, err := o.clusters(env)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(env.Streams.ErrOut, nil))
	e := exporter.New(clusters, exporter.Options{
		Interval: o.interval, FleetInterval: o.fleetInterval, WarnDays: o.warnDays,
		Parallel: o.parallel, Timeout: o.timeout, MaxProxySeries: o.maxProxySeries, AggregateProxies: o.aggregateProxies,
		Log: log,
	})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (choose another --listen)", o.listen, err)
	}
	srv := &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Run(ctx)
	}()
	go func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "clusters", len(clusters))
	err = srv.Serve(ln)
	cancel()
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
