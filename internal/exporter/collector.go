package exporter

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// The metrics of the snapshots (see the README for each).
var (
	caNotAfter = prometheus.NewDesc("meshca_ca_cert_not_after_seconds",
		"Unix time at which a root or intermediate of the mesh CA expires, per place it is found (source: cacerts, istio-ca-root-cert, webhook); every root of a multi-root bundle is its own series.",
		[]string{"cluster", "source", "role", "fingerprint", "subject"}, nil)
	proxyNotAfter = prometheus.NewDesc("meshca_proxy_cert_not_after_seconds",
		"Unix time at which a workload certificate held by a proxy expires (ztunnel: one per identity). With --aggregate-proxies, one series per kind (namespace, pod and identity empty) holding the earliest.",
		[]string{"cluster", "kind", "namespace", "pod", "identity"}, nil)
	proxyOmitted = prometheus.NewDesc("meshca_proxy_cert_series_omitted",
		"Workload certificates not published as meshca_proxy_cert_not_after_seconds because of --max-proxy-series (those expiring last are omitted).",
		[]string{"cluster"}, nil)
	proxyCerts = prometheus.NewDesc("meshca_proxy_certs",
		"Workload certificates held by proxies, by freshness at the last fleet walk (ok, not_refreshing: past 60% of its lifetime, expired, not_yet_valid); counted whatever else is wrong with the proxy.",
		[]string{"cluster", "kind", "freshness"}, nil)
	proxies = prometheus.NewDesc("meshca_proxies",
		"Proxies by kind and by the verdict of the last fleet walk against cacerts (match, stale, not_refreshing, expiring, unreadable, not_ready, empty: a ztunnel without certificates).",
		[]string{"cluster", "kind", "state"}, nil)
	rootConfigMaps = prometheus.NewDesc("meshca_root_configmaps",
		"istio-ca-root-cert ConfigMaps by whether they carry the roots of cacerts (match, stale), at the last fleet walk.",
		[]string{"cluster", "state"}, nil)
	rotationPhase = prometheus.NewDesc("meshca_rotation_phase",
		"1 for the phase of the rotation record (ConfigMap meshca-rotation), 0 for the others; none without a record.",
		[]string{"cluster", "phase"}, nil)
	rotationSince = prometheus.NewDesc("meshca_rotation_phase_written_timestamp_seconds",
		"Unix time at which the current rotation phase was written (proven, for complete; the rollback, for rolled-back).",
		[]string{"cluster", "phase"}, nil)
)

// States are the state label values of meshca_proxies, in order.
var States = []string{"match", "stale", "not_refreshing", "expiring", "unreadable", "not_ready", "empty"}

// Freshnesses are the freshness label values of meshca_proxy_certs.
var Freshnesses = []verify.Freshness{verify.FreshnessOK, verify.FreshnessNotRefreshing, verify.FreshnessExpired, verify.FreshnessNotYetValid}

// label turns a verify value into a label value (snake case).
func label[T ~string](v T) string { return strings.ReplaceAll(string(v), "-", "_") }

// stateOf maps a verify.Status to its state label.
func stateOf(s verify.Status) string {
	if s == verify.StatusNothingToVerify {
		return "empty"
	}
	return label(s)
}

// collector publishes the latest snapshots at scrape time.
type collector struct{ e *Exporter }

// Describe sends the descriptors of the snapshot metrics.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{caNotAfter, proxyNotAfter, proxyOmitted, proxyCerts, proxies, rootConfigMaps, rotationPhase, rotationSince} {
		ch <- d
	}
}

// Collect sends the metrics of every cluster's latest snapshots.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, cl := range c.e.clusters {
		cl.mu.Lock()
		ca, rot, rep := cl.ca, cl.rotation, cl.fleet
		cl.mu.Unlock()
		if ca != nil {
			for _, x := range ca.certs {
				ch <- prometheus.MustNewConstMetric(caNotAfter, prometheus.GaugeValue, unix(x.cert.NotAfter),
					cl.Name, x.source, string(pki.RoleOf(x.cert)), pki.Fingerprint(x.cert), x.cert.Subject.String())
			}
		}
		if rot != nil {
			for _, p := range phases {
				v := 0.0
				if p == rot.phase {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(rotationPhase, prometheus.GaugeValue, v, cl.Name, string(p))
			}
			if !rot.since.IsZero() {
				ch <- prometheus.MustNewConstMetric(rotationSince, prometheus.GaugeValue, unix(rot.since), cl.Name, string(rot.phase))
			}
		}
		if rep != nil {
			c.fleet(ch, cl.Name, rep)
		}
	}
}

// fleet sends the metrics of a fleet walk.
func (c *collector) fleet(ch chan<- prometheus.Metric, cluster string, rep *verify.Report) {
	counts := map[mesh.Kind]map[string]int{}
	fresh := map[mesh.Kind]map[string]int{}
	for _, k := range mesh.Kinds {
		counts[k], fresh[k] = map[string]int{}, map[string]int{}
	}
	type leaf struct {
		kind                     mesh.Kind
		namespace, pod, identity string
		notAfter                 time.Time
	}
	var leafs []leaf
	for i := range rep.Proxies {
		r := &rep.Proxies[i]
		if counts[r.Kind] == nil {
			counts[r.Kind], fresh[r.Kind] = map[string]int{}, map[string]int{}
		}
		counts[r.Kind][stateOf(r.Status)]++
		for _, l := range r.Leafs {
			leafs = append(leafs, leaf{r.Kind, r.Namespace, r.Name, l.Identity, l.NotAfter})
			fresh[r.Kind][label(l.Freshness)]++
		}
	}
	for k, byState := range counts {
		for _, s := range States {
			ch <- prometheus.MustNewConstMetric(proxies, prometheus.GaugeValue, float64(byState[s]), cluster, string(k), s)
		}
		for _, f := range Freshnesses {
			ch <- prometheus.MustNewConstMetric(proxyCerts, prometheus.GaugeValue, float64(fresh[k][label(f)]), cluster, string(k), label(f))
		}
	}
	if cms := rep.RootConfigMaps; cms != nil {
		ch <- prometheus.MustNewConstMetric(rootConfigMaps, prometheus.GaugeValue, float64(cms.Match), cluster, "match")
		ch <- prometheus.MustNewConstMetric(rootConfigMaps, prometheus.GaugeValue, float64(len(cms.Stale)), cluster, "stale")
	}
	// The leafs that expire first matter most: they are kept under the cap,
	// and they are each kind's aggregate.
	slices.SortFunc(leafs, func(a, b leaf) int { return a.notAfter.Compare(b.notAfter) })
	if c.e.opts.AggregateProxies {
		seen := map[mesh.Kind]bool{}
		for _, l := range leafs {
			if !seen[l.kind] {
				seen[l.kind] = true
				ch <- prometheus.MustNewConstMetric(proxyNotAfter, prometheus.GaugeValue, unix(l.notAfter), cluster, string(l.kind), "", "", "")
			}
		}
		return
	}
	omitted := 0
	if n := c.e.opts.MaxProxySeries; len(leafs) > n {
		omitted = len(leafs) - n
		leafs = leafs[:n]
	}
	// Two identities of one ztunnel never repeat; a dump listing one twice
	// would, so duplicates keep the earliest (already first).
	slices.SortStableFunc(leafs, func(a, b leaf) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.pod, b.pod), cmp.Compare(a.identity, b.identity))
	})
	leafs = slices.CompactFunc(leafs, func(a, b leaf) bool {
		return a.kind == b.kind && a.namespace == b.namespace && a.pod == b.pod && a.identity == b.identity
	})
	for _, l := range leafs {
		ch <- prometheus.MustNewConstMetric(proxyNotAfter, prometheus.GaugeValue, unix(l.notAfter), cluster, string(l.kind), l.namespace, l.pod, l.identity)
	}
	ch <- prometheus.MustNewConstMetric(proxyOmitted, prometheus.GaugeValue, float64(omitted), cluster)
}

// unix is t in Unix seconds.
func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
