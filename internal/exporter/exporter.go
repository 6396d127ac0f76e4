// Package exporter is meshca's Prometheus exporter: it publishes, for one or
// several clusters, the validity of every root and intermediate of the mesh
// CA (the cacerts Secret, the istio-ca-root-cert ConfigMaps, the caBundle of
// istiod's webhooks — every root of a multi-root bundle as its own series),
// the workload certificates every proxy holds (ztunnel's included, which
// nothing else exports), the fleet verification's verdict per kind of
// proxy, and the phase of a rotation in progress.
//
// It owns no reader of its own: the CA and the ConfigMaps are read by
// internal/mesh, the proxies walked and judged by internal/verify (which
// reads their dumps through internal/proxy), the rotation record decoded
// into internal/rotate's Record. Two loops per cluster refresh a snapshot —
// the CA side every Interval, the fleet walk every FleetInterval — and a
// collector turns the latest snapshots into metrics at scrape time, so a
// scrape never waits on the cluster.
package exporter

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/meshca/meshca/internal/verify"
)

// Defaults of Options, and of `meshca exporter`.
const (
	// DefaultListen is the exporter's address.
	DefaultListen = ":9599"
	// DefaultInterval refreshes the CA side: one Secret, one list of
	// ConfigMaps, the webhooks and the rotation record — cheap.
	DefaultInterval = time.Minute
	// DefaultFleetInterval refreshes the fleet walk: one port-forward per
	// proxy, so much less often.
	DefaultFleetInterval = 5 * time.Minute
	// DefaultMaxProxySeries caps meshca_proxy_cert_not_after_seconds per
	// cluster: beyond it the leafs that expire first are kept and the rest
	// counted in meshca_proxy_cert_series_omitted.
	DefaultMaxProxySeries = 10000
)

// Stages of a scrape, the stage label of the error counter and timestamps.
const (
	StageCA        = "ca"
	StageConfigMap = "configmaps"
	StageWebhook   = "webhooks"
	StageRotation  = "rotation"
	StageFleet     = "fleet"
)

// Stages lists every stage.
var Stages = []string{StageCA, StageConfigMap, StageWebhook, StageRotation, StageFleet}

// Cluster is one cluster the exporter watches.
type Cluster struct {
	// Name is the cluster label (the kubeconfig context, or "in-cluster").
	Name string
	// Source reaches its API and its proxies (verify.LiveSource).
	Source verify.Source
}

// Options tunes an Exporter.
type Options struct {
	// Interval refreshes the CA side, FleetInterval the fleet walk
	// (defaults above when 0).
	Interval, FleetInterval time.Duration
	// WarnDays is the fleet walk's expiry window (verify's --warn-days).
	WarnDays int
	// Parallel and Timeout tune the fleet walk (verify's defaults when 0).
	Parallel int
	Timeout  time.Duration
	// MaxProxySeries caps the leaf series per cluster (DefaultMaxProxySeries
	// when 0).
	MaxProxySeries int
	// AggregateProxies publishes one leaf series per cluster and kind (the
	// earliest NotAfter) instead of one per pod and identity.
	AggregateProxies bool
	// Clock is the time source (the real clock when nil).
	Clock clock.PassiveClock
	// Log receives one line per failed stage (slog.Default when nil).
	Log *slog.Logger
}

func (o *Options) defaults() {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.FleetInterval <= 0 {
		o.FleetInterval = DefaultFleetInterval
	}
	if o.MaxProxySeries <= 0 {
		o.MaxProxySeries = DefaultMaxProxySeries
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Exporter watches clusters and serves their metrics.
type Exporter struct {
	opts     Options
	clusters []*clusterState
	registry *prometheus.Registry

	errors     *prometheus.CounterVec
	lastScrape *prometheus.GaugeVec
	duration   *prometheus.GaugeVec
}

// clusterState is the latest snapshot of one cluster.
type clusterState struct {
	Cluster
	mu       sync.Mutex
	ca       *caSnapshot
	rotation *rotationSnapshot
	fleet    *verify.Report
	// attempted records the stages tried at least once (readiness).
	attempted map[string]bool
}

// New returns an exporter for clusters; Run starts its loops.
func New(clusters []Cluster, opts Options) *Exporter {
	opts.defaults()
	e := &Exporter{opts: opts, registry: prometheus.NewRegistry()}
	for _, c := range clusters {
		e.clusters = append(e.clusters, &clusterState{Cluster: c, attempted: map[string]bool{}})
	}
	e.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshca_scrape_errors_total",
		Help: "Failed reads of a cluster by the meshca exporter, by stage (ca, configmaps, webhooks, rotation, fleet).",
	}, []string{"cluster", "stage"})
	e.lastScrape = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshca_last_scrape_timestamp_seconds",
		Help: "Unix time of the last successful read of a cluster by the meshca exporter, by stage.",
	}, []string{"cluster", "stage"})
	e.duration = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshca_scrape_duration_seconds",
		Help: "How long the last read of a cluster took, by stage.",
	}, []string{"cluster", "stage"})
	for _, c := range e.clusters {
		for _, s := range Stages {
			// Zero series from the start, so rate() and alerts see them.
			e.errors.WithLabelValues(c.Name, s)
		}
	}
	e.registry.MustRegister(e.errors, e.lastScrape, e.duration, &collector{e: e},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return e
}

// Run refreshes every cluster until ctx ends: the CA side every Interval,
// the fleet every FleetInterval, each starting at once.
func (e *Exporter) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range e.clusters {
		wg.Go(func() { wait.UntilWithContext(ctx, func(ctx context.Context) { e.refreshCA(ctx, c) }, e.opts.Interval) })
		wg.Go(func() {
			wait.UntilWithContext(ctx, func(ctx context.Context) { e.refreshFleet(ctx, c) }, e.opts.FleetInterval)
		})
	}
	wg.Wait()
}

// Ready reports whether every stage of every cluster was tried at least
// once, so that a scrape shows data (or the errors counted for it).
func (e *Exporter) Ready() bool {
	for _, c := range e.clusters {
		c.mu.Lock()
		n := len(c.attempted)
		c.mu.Unlock()
		if n < len(Stages) {
			return false
		}
	}
	return true
}

// Handler serves /metrics, /healthz (the process serves) and /readyz
// (Ready).
func (e *Exporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(e.registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(e.opts.Log.Handler(), slog.LevelError)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !e.Ready() {
			http.Error(w, "not ready: the first read of every cluster is still running", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// stage times fn as stage of cluster c and counts its failure.
func (e *Exporter) stage(c *clusterState, stage string, fn func() error) {
	start := e.opts.Clock.Now()
	err := fn()
	end := e.opts.Clock.Now()
	e.duration.WithLabelValues(c.Name, stage).Set(end.Sub(start).Seconds())
	c.mu.Lock()
	c.attempted[stage] = true
	c.mu.Unlock()
	if err != nil {
		e.errors.WithLabelValues(c.Name, stage).Inc()
		e.opts.Log.Error("read failed", "cluster", c.Name, "stage", stage, "err", err)
		return
	}
	e.lastScrape.WithLabelValues(c.Name, stage).Set(float64(end.UnixNano()) / 1e9)
}

// refreshFleet walks the fleet of c once (verify.Run against the CA in
// cacerts) and keeps the report; a failed walk keeps the previous one.
func (e *Exporter) refreshFleet(ctx context.Context, c *clusterState) {
	e.stage(c, StageFleet, func() error {
		rep, err := verify.Run(ctx, c.Source, func(ctx context.Context, ns string) (verify.Expectation, error) {
			return e.expectation(ctx, c.Source.Clientset, ns)
		}, verify.Options{Parallel: e.opts.Parallel, Timeout: e.opts.Timeout, Now: e.opts.Clock.Now})
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.fleet = rep
		c.mu.Unlock()
		return nil
	})
}

// expectation is the fleet walk's: the CA in cacerts, with WarnDays.
func (e *Exporter) expectation(ctx context.Context, cs kubernetes.Interface, namespace string) (verify.Expectation, error) {
	ca, err := readCA(ctx, cs, namespace)
	if err != nil {
		return verify.Expectation{}, err
	}
	exp := verify.ExpectationFromCA(ca)
	exp.WarnDays = e.opts.WarnDays
	return exp, nil
}
