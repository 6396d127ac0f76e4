package exporter

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/verify"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

const (
	idA = "spiffe://cluster.local/ns/ambient/sa/a"
	idB = "spiffe://cluster.local/ns/ambient/sa/b"
)

// world is one cluster in the trust phase of a rotation, read through a
// fake clientset (pure logic: the sandbox test reads a real one).
type world struct {
	p       *vt.Rotation
	objects []runtime.Object
	dumps   map[string][]byte
	frozen  *x509.Certificate
	leafA   *x509.Certificate
}

func newWorld(t *testing.T) *world {
	t.Helper()
	p := vt.NewRotation(t)
	b := pkitest.Bundle(t, p.OldRoot, p.OldInt)
	b.RootCert = append(append([]byte(nil), b.RootCert...), pki.EncodeCert(p.NewRoot.Cert)...)
	w := &world{p: p, dumps: map[string][]byte{}}
	written := pkitest.Now.Add(-3 * time.Hour)
	record, _ := json.Marshal(rotate.Record{Strategy: "phased", Transitions: []rotate.Transition{{Phase: rotate.PhaseTrust, Written: &written}}})
	pod := func(ns, name, node string, labels map[string]string, proxy bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main"}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
		if proxy {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: mesh.ProxyContainer})
		}
		return p
	}
	zt := map[string]string{mesh.LabelApp: mesh.ZtunnelApp}
	service := func(name string) *admissionregistrationv1.ServiceReference {
		return &admissionregistrationv1.ServiceReference{Namespace: "istio-system", Name: name}
	}
	w.objects = []runtime.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "cacerts"}, Data: b.SecretData()},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": string(b.RootCert)}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ambient", Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": string(pki.EncodeCert(p.OldRoot.Cert))}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: rotate.RecordName}, Data: map[string]string{recordKey: string(record)}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "sidecar.istio.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: service("istiod"), CABundle: b.RootCert}}}},
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "other-validator"},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "other", ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: service("not-istiod"), CABundle: pki.EncodeCert(p.NewInt.Cert)}}}},
		pod("istio-system", "ztunnel-a", "node-1", zt, false),
		pod("istio-system", "ztunnel-b", "node-2", zt, false),
		pod("istio-system", "ztunnel-c", "node-3", zt, false),
		pod("ambient", "waypoint-1", "node-1", map[string]string{mesh.LabelManaged: mesh.ManagedWaypoint}, true),
	}
	both := vt.Certs(p.OldRoot, p.NewRoot)
	w.leafA = vt.Leaf(t, p.OldInt, idA)
	// ztunnel-b stopped refreshing: its leaf is 20h into 24h.
	w.frozen = pkitest.Leaf(t, p.OldInt, idB, pkitest.Now.Add(-20*time.Hour), 24*time.Hour).Cert
	w.dumps["ztunnel-a"] = vt.ZtunnelDump(
		vt.ZtunnelIdentity{Name: idA, Chain: []*x509.Certificate{w.leafA, p.OldInt.Cert}, Roots: both},
		vt.ZtunnelIdentity{Name: idB, Chain: []*x509.Certificate{vt.Leaf(t, p.OldInt, idB), p.OldInt.Cert}, Roots: both})
	w.dumps["ztunnel-b"] = vt.ZtunnelDump(vt.ZtunnelIdentity{Name: idB, Chain: []*x509.Certificate{w.frozen, p.OldInt.Cert}, Roots: both})
	w.dumps["ztunnel-c"] = vt.ZtunnelDump()
	w.dumps["waypoint-1"] = vt.EnvoyDump([]*x509.Certificate{vt.Leaf(t, p.OldInt, "spiffe://cluster.local/ns/ambient/sa/waypoint"), p.OldInt.Cert}, vt.Certs(p.OldRoot))
	return w
}

func (w *world) source() verify.Source {
	return verify.Source{
		Clientset: fake.NewClientset(w.objects...),
		Namespace: "istio-system",
		Fetch: func(_ context.Context, p *mesh.Proxy) ([]byte, error) {
			if d, ok := w.dumps[p.Name]; ok {
				return d, nil
			}
			return nil, fmt.Errorf("no dump for %s", p.Name)
		},
	}
}

// serve refreshes every stage once and serves the exporter's handler.
func serve(t *testing.T, e *Exporter) string {
	t.Helper()
	for _, c := range e.clusters {
		e.refreshCA(context.Background(), c)
		e.refreshFleet(context.Background(), c)
	}
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestExporterMetrics(t *testing.T) {
	w := newWorld(t)
	var logs bytes.Buffer
	e := New([]Cluster{{Name: "east", Source: w.source()}}, Options{
		Clock: clocktesting.NewFakePassiveClock(pkitest.Now), Log: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	m := scrape(t, serve(t, e))
	p := w.p
	unix := func(c *x509.Certificate) float64 { return float64(c.NotAfter.Unix()) }
	fp := func(c *pki.CA) string { return pki.Fingerprint(c.Cert) }

	gotCA := m.series("meshca_ca_cert_not_after_seconds", map[string]string{"cluster": "east"}, "source", "role", "fingerprint")
	wantCA := map[string]float64{
		// Both roots of the trust bundle, each its own series.
		"cacerts|root|" + fp(p.OldRoot):            unix(p.OldRoot.Cert),
		"cacerts|root|" + fp(p.NewRoot):            unix(p.NewRoot.Cert),
		"cacerts|intermediate|" + fp(p.OldInt):     unix(p.OldInt.Cert),
		"istio-ca-root-cert|root|" + fp(p.OldRoot): unix(p.OldRoot.Cert),
		"istio-ca-root-cert|root|" + fp(p.NewRoot): unix(p.NewRoot.Cert),
		"webhook|root|" + fp(p.OldRoot):            unix(p.OldRoot.Cert),
		"webhook|root|" + fp(p.NewRoot):            unix(p.NewRoot.Cert),
	}
	if diff := cmp.Diff(wantCA, gotCA); diff != "" {
		t.Errorf("meshca_ca_cert_not_after_seconds (-want +got):\n%s", diff)
	}
	if subj := m.series("meshca_ca_cert_not_after_seconds", map[string]string{"role": "intermediate"}, "subject"); len(subj) != 1 || subj[p.OldInt.Cert.Subject.String()] == 0 {
		t.Errorf("intermediate subject label = %v, want %q", subj, p.OldInt.Cert.Subject.String())
	}

	gotLeafs := m.series("meshca_proxy_cert_not_after_seconds", nil, "kind", "pod", "identity")
	wantLeafs := map[string]float64{
		"ztunnel|ztunnel-a|" + idA: unix(w.leafA),
		"ztunnel|ztunnel-a|" + idB: gotLeafs["ztunnel|ztunnel-a|"+idB],
		"ztunnel|ztunnel-b|" + idB: unix(w.frozen),
		"waypoint|waypoint-1|spiffe://cluster.local/ns/ambient/sa/waypoint": gotLeafs["waypoint|waypoint-1|spiffe://cluster.local/ns/ambient/sa/waypoint"],
	}
	if diff := cmp.Diff(wantLeafs, gotLeafs); diff != "" {
		t.Errorf("meshca_proxy_cert_not_after_seconds (-want +got):\n%s", diff)
	}
	for k, v := range gotLeafs {
		if v < float64(pkitest.Now.Unix()) {
			t.Errorf("leaf %s: not_after %v is in the past of the test clock", k, v)
		}
	}

	gotStates := m.series("meshca_proxies", map[string]string{"cluster": "east"}, "kind", "state")
	// The waypoint lacks the new root: stale. ztunnel-b's leaf is past its
	// refresh point. ztunnel-c holds nothing.
	wantStates := map[string]float64{"ztunnel|match": 1, "ztunnel|not_refreshing": 1, "ztunnel|empty": 1, "waypoint|stale": 1}
	if diff := cmp.Diff(wantStates, nonZero(gotStates)); diff != "" {
		t.Errorf("meshca_proxies (non-zero; -want +got):\n%s", diff)
	}
	if n := len(gotStates); n != len(mesh.Kinds)*len(States) {
		t.Errorf("meshca_proxies has %d series, want every kind × state (%d) so alerts never see gaps", n, len(mesh.Kinds)*len(States))
	}
	// Leafs by freshness: ztunnel-b's is past its refresh point.
	wantFresh := map[string]float64{"ztunnel|ok": 2, "ztunnel|not_refreshing": 1, "waypoint|ok": 1}
	if got := nonZero(m.series("meshca_proxy_certs", map[string]string{"cluster": "east"}, "kind", "freshness")); !cmp.Equal(wantFresh, got) {
		t.Errorf("meshca_proxy_certs (non-zero) = %v, want %v", got, wantFresh)
	}
	if got := m.series("meshca_root_configmaps", nil, "state"); !cmp.Equal(got, map[string]float64{"match": 1, "stale": 1}) {
		t.Errorf("meshca_root_configmaps = %v, want one match (istio-system) and one stale (ambient)", got)
	}

	wantPhase := map[string]float64{"none": 0, "trust": 1, "issue": 0, "retire": 0, "complete": 0, "rolled-back": 0}
	if got := m.series("meshca_rotation_phase", nil, "phase"); !cmp.Equal(got, wantPhase) {
		t.Errorf("meshca_rotation_phase = %v, want %v", got, wantPhase)
	}
	if got := m.series("meshca_rotation_phase_written_timestamp_seconds", nil, "phase"); !cmp.Equal(got, map[string]float64{"trust": float64(pkitest.Now.Add(-3 * time.Hour).Unix())}) {
		t.Errorf("meshca_rotation_phase_written_timestamp_seconds = %v", got)
	}

	errs := m.series("meshca_scrape_errors_total", nil, "stage")
	last := m.series("meshca_last_scrape_timestamp_seconds", nil, "stage")
	for _, s := range Stages {
		if errs[s] != 0 {
			t.Errorf("meshca_scrape_errors_total{stage=%q} = %v, want 0; log:\n%s", s, errs[s], logs.String())
		}
		if last[s] != float64(pkitest.Now.Unix()) {
			t.Errorf("meshca_last_scrape_timestamp_seconds{stage=%q} = %v, want the clock %d", s, last[s], pkitest.Now.Unix())
		}
	}
	for _, family := range []string{"go_goroutines", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if m[family] == nil {
			t.Errorf("no %s: the Go and process collectors are missing (%s)", family, m)
		}
	}
}

func TestExporterCardinality(t *testing.T) {
	w := newWorld(t)
	tests := map[string]struct {
		opts Options
		want map[string]float64
		omit float64
	}{
		"the cap keeps the leafs that expire first and counts the rest": {
			opts: Options{MaxProxySeries: 1},
			want: map[string]float64{"ztunnel|ztunnel-b|" + idB: float64(w.frozen.NotAfter.Unix())},
			omit: 3,
		},
		"aggregation publishes the earliest leaf per kind, without pod or identity": {
			opts: Options{AggregateProxies: true},
			want: map[string]float64{"ztunnel||": float64(w.frozen.NotAfter.Unix()), "waypoint||": -1},
			omit: -1,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.opts.Clock = clocktesting.NewFakePassiveClock(pkitest.Now)
			e := New([]Cluster{{Name: "east", Source: w.source()}}, tc.opts)
			m := scrape(t, serve(t, e))
			got := m.series("meshca_proxy_cert_not_after_seconds", nil, "kind", "pod", "identity")
			for k, v := range tc.want {
				if v == -1 { // present, value not checked
					tc.want[k] = got[k]
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("meshca_proxy_cert_not_after_seconds (-want +got):\n%s", diff)
			}
			omitted := m.series("meshca_proxy_cert_series_omitted", nil, "cluster")
			if tc.omit >= 0 && omitted["east"] != tc.omit {
				t.Errorf("meshca_proxy_cert_series_omitted = %v, want %v", omitted, tc.omit)
			}
			if tc.omit < 0 && len(omitted) != 0 {
				t.Errorf("meshca_proxy_cert_series_omitted = %v under aggregation, want none", omitted)
			}
		})
	}
}

func TestExporterErrorsAndReadiness(t *testing.T) {
	w := newWorld(t)
	src := w.source()
	// No permission to read Secrets: the CA and fleet stages fail, the
	// others go on.
	cs := src.Clientset.(*fake.Clientset)
	cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf(`secrets "cacerts" is forbidden: User "system:serviceaccount:istio-system:meshca-exporter" cannot get resource "secrets"`)
	})
	var logs bytes.Buffer
	e := New([]Cluster{{Name: "east", Source: src}}, Options{Clock: clocktesting.NewFakePassiveClock(pkitest.Now), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	if code := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the first read = %d, want 503", code)
	}
	if code := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	e.refreshCA(context.Background(), e.clusters[0])
	e.refreshFleet(context.Background(), e.clusters[0])
	if code := get(t, srv.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after the first read = %d, want 200", code)
	}
	m := scrape(t, srv.URL)
	errs := m.series("meshca_scrape_errors_total", nil, "stage")
	want := map[string]float64{StageCA: 1, StageFleet: 1, StageConfigMap: 0, StageWebhook: 0, StageRotation: 0}
	if diff := cmp.Diff(want, errs); diff != "" {
		t.Errorf("meshca_scrape_errors_total (-want +got):\n%s", diff)
	}
	if last := m.series("meshca_last_scrape_timestamp_seconds", nil, "stage"); last[StageCA] != 0 || last[StageConfigMap] == 0 {
		t.Errorf("meshca_last_scrape_timestamp_seconds = %v: want none for the failed ca stage, one for configmaps", last)
	}
	if !strings.Contains(logs.String(), "stage=ca") || !strings.Contains(logs.String(), "forbidden") {
		t.Errorf("log does not name the failed stage and its cause:\n%s", logs.String())
	}
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestPhaseOf(t *testing.T) {
	at := func(h int) *time.Time { v := pkitest.Now.Add(time.Duration(h) * time.Hour); return &v }
	tests := map[string]struct {
		record rotate.Record
		phase  rotate.Phase
		since  *time.Time
	}{
		"an empty record is phase none": {phase: rotate.PhaseNone},
		"the phase written last wins": {
			record: rotate.Record{Transitions: []rotate.Transition{{Phase: rotate.PhaseTrust, Written: at(0), Proven: at(1)}, {Phase: rotate.PhaseIssue, Written: at(2)}}},
			phase:  rotate.PhaseIssue, since: at(2),
		},
		"retire proven is complete, from the proof": {
			record: rotate.Record{Transitions: []rotate.Transition{{Phase: rotate.PhaseTrust, Written: at(0)}, {Phase: rotate.PhaseIssue, Written: at(2)}, {Phase: rotate.PhaseRetire, Written: at(4), Proven: at(5)}}},
			phase:  rotate.PhaseComplete, since: at(5),
		},
		"a rollback after the last write is rolled-back": {
			record: rotate.Record{Transitions: []rotate.Transition{{Phase: rotate.PhaseTrust, Written: at(0)}}, RolledBack: at(3)},
			phase:  rotate.PhaseRolledBack, since: at(3),
		},
		"a rotation started again after a rollback is its new phase": {
			record: rotate.Record{Transitions: []rotate.Transition{{Phase: rotate.PhaseTrust, Written: at(4)}}, RolledBack: at(3)},
			phase:  rotate.PhaseTrust, since: at(4),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := phaseOf(&tc.record)
			want := time.Time{}
			if tc.since != nil {
				want = *tc.since
			}
			if got.phase != tc.phase || !got.since.Equal(want) {
				t.Errorf("phaseOf() = %s since %s, want %s since %s", got.phase, got.since, tc.phase, want)
			}
		})
	}
}

func TestReadRotationBadRecord(t *testing.T) {
	cs := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: rotate.RecordName}, Data: map[string]string{recordKey: "{not json"}})
	_, err := readRotation(context.Background(), cs, "istio-system")
	if err == nil || !strings.Contains(err.Error(), "configmap istio-system/meshca-rotation: state.json is not a rotation record") {
		t.Errorf("readRotation() error = %v, want one naming the ConfigMap and key", err)
	}
}

// TestDeployNamesExist keeps the alert rules and the Grafana dashboard
// honest: every meshca_ metric they query is one the exporter serves.
func TestDeployNamesExist(t *testing.T) {
	w := newWorld(t)
	e := New([]Cluster{{Name: "east", Source: w.source()}}, Options{Clock: clocktesting.NewFakePassiveClock(pkitest.Now)})
	served := scrape(t, serve(t, e))
	name := regexp.MustCompile(`\bmeshca_[a-z_]+`)
	for _, file := range []string{"meshca-rules.yaml", "grafana-dashboard.json"} {
		data, err := os.ReadFile(filepath.Join(promDir, file))
		if err != nil {
			t.Fatal(err)
		}
		if file == "grafana-dashboard.json" {
			var d struct {
				Panels []struct {
					Targets []struct{ Expr string } `json:"targets"`
				} `json:"panels"`
			}
			if err := json.Unmarshal(data, &d); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if len(d.Panels) == 0 {
				t.Fatalf("%s has no panels", file)
			}
		}
		names := name.FindAllString(string(data), -1)
		if len(names) == 0 {
			t.Fatalf("%s queries no meshca metric", file)
		}
		for _, n := range names {
			if served[n] == nil {
				t.Errorf("%s queries %s, which the exporter does not serve (%s)", file, n, served)
			}
		}
	}
}

// TestExporterKeepsLastGoodRead: a stage that starts failing keeps the
// series of its last success; its error counter says it is failing.
func TestExporterKeepsLastGoodRead(t *testing.T) {
	w := newWorld(t)
	src := w.source()
	e := New([]Cluster{{Name: "east", Source: src}}, Options{Clock: clocktesting.NewFakePassiveClock(pkitest.Now), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	url := serve(t, e)
	before := scrape(t, url).series("meshca_ca_cert_not_after_seconds", map[string]string{"source": SourceCACerts}, "fingerprint")
	src.Clientset.(*fake.Clientset).PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("etcdserver: request timed out")
	})
	e.refreshCA(context.Background(), e.clusters[0])
	m := scrape(t, url)
	if after := m.series("meshca_ca_cert_not_after_seconds", map[string]string{"source": SourceCACerts}, "fingerprint"); len(before) != 3 || !cmp.Equal(before, after) {
		t.Errorf("cacerts series after a failed read = %v, want the last good read %v", after, before)
	}
	if n := m.series("meshca_scrape_errors_total", map[string]string{"stage": StageCA}, "cluster")["east"]; n != 1 {
		t.Errorf("meshca_scrape_errors_total{stage=ca} = %v, want 1", n)
	}
}
