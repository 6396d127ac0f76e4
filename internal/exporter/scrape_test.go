package exporter

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape GETs url/metrics as Prometheus would and parses the text format
// with Prometheus' own parser.
func scrape(t testing.TB, url string) metrics {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// metrics are the families of one scrape.
type metrics map[string]*dto.MetricFamily

// series returns the value of every series of family name whose labels
// include match, keyed by the values of the labels keys (joined by "|").
func (m metrics) series(name string, match map[string]string, keys ...string) map[string]float64 {
	out := map[string]float64{}
	mf := m[name]
	if mf == nil {
		return out
	}
next:
	for _, s := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range match {
			if labels[k] != v {
				continue next
			}
		}
		var key []string
		for _, k := range keys {
			key = append(key, labels[k])
		}
		v := s.GetGauge().GetValue()
		if s.GetCounter() != nil {
			v = s.GetCounter().GetValue()
		}
		out[strings.Join(key, "|")] = v
	}
	return out
}

// String lists the family names, for failure messages.
func (m metrics) String() string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}
