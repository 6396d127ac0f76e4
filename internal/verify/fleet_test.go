package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/proxy"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

// fleetFixture is a fleet of n ztunnels and a waypoint whose dumps all
// match exp.
type fleetFixture struct {
	proxies []mesh.Proxy
	dumps   map[string][]byte
	exp     Expectation
}

func newFleet(t *testing.T, n int) *fleetFixture {
	t.Helper()
	p := vt.NewRotation(t)
	leaf := vt.Leaf(t, p.OldInt, idA)
	zt := vt.ZtunnelDump(vt.ZtunnelIdentity{Name: idA, Chain: certs(leaf, p.OldInt.Cert, p.OldRoot.Cert), Roots: certs(p.OldRoot.Cert)})
	f := &fleetFixture{
		dumps: map[string][]byte{},
		exp:   Expectation{Source: "test", Roots: []string{fp(p.OldRoot)}, Signer: fp(p.OldInt)},
	}
	for i := range n {
		name := fmt.Sprintf("ztunnel-%04d", i)
		f.proxies = append(f.proxies, mesh.Proxy{Kind: mesh.KindZtunnel, Namespace: "istio-system", Name: name, Node: fmt.Sprintf("node-%04d", i), Ready: true})
		f.dumps[name] = zt
	}
	f.proxies = append(f.proxies, mesh.Proxy{Kind: mesh.KindWaypoint, Namespace: "ambient", Name: "waypoint-0", Ready: true, XDSAgent: true})
	f.dumps["waypoint-0"] = vt.EnvoyDump(certs(vt.Leaf(t, p.OldInt, idB), p.OldInt.Cert), certs(p.OldRoot.Cert))
	return f
}

// fetch serves the fixture's dumps.
func (f *fleetFixture) fetch(_ context.Context, p *mesh.Proxy) ([]byte, error) {
	d, ok := f.dumps[p.Name]
	if !ok {
		return nil, fmt.Errorf("no dump for %s", p.Name)
	}
	return d, nil
}

func fixedClock() time.Time { return pkitest.Now }

func TestFleetBoundsParallelism(t *testing.T) {
	f := newFleet(t, 120)
	for _, parallel := range []int{1, 4, 16} {
		t.Run(fmt.Sprintf("at most %d reads at once", parallel), func(t *testing.T) {
			var inFlight, peak atomic.Int32
			fetch := func(ctx context.Context, p *mesh.Proxy) ([]byte, error) {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				return f.fetch(ctx, p)
			}
			rep, err := Fleet(context.Background(), f.proxies, fetch, f.exp, Options{Parallel: parallel, Now: fixedClock})
			if err != nil {
				t.Fatal(err)
			}
			if got := int(peak.Load()); got > parallel {
				t.Errorf("peak concurrent reads = %d, want at most %d", got, parallel)
			} else if parallel > 1 && got < 2 {
				t.Errorf("peak concurrent reads = %d: the walk did not run in parallel", got)
			}
			if rep.Total.Match != len(f.proxies) || !rep.OK() {
				t.Errorf("counts = %+v, OK = %v; want all %d matching", rep.Total, rep.OK(), len(f.proxies))
			}
			if rep.Walk.Parallel != parallel {
				t.Errorf("Walk.Parallel = %d, want %d", rep.Walk.Parallel, parallel)
			}
		})
	}
}

func TestFleetGoesOnAfterPerPodErrors(t *testing.T) {
	f := newFleet(t, 6)
	f.proxies[1].Ready, f.proxies[1].NotReady = false, "Pending (not scheduled)"
	refused := &kube.Error{Namespace: "istio-system", Pod: "ztunnel-0002", Reason: kube.ReasonPortForward, Attempts: 3,
		Err: errors.New("port-forward to port 15000 refused: connection refused")}
	f.dumps["ztunnel-0003"] = []byte("<html>not json</html>")
	f.dumps["ztunnel-0004"] = vt.ZtunnelDump()
	var fetched sync.Map
	fetch := func(ctx context.Context, p *mesh.Proxy) ([]byte, error) {
		fetched.Store(p.Name, true)
		switch p.Name {
		case "ztunnel-0002":
			return nil, refused
		case "ztunnel-0005":
			<-ctx.Done() // never answers
			return nil, ctx.Err()
		}
		return f.fetch(ctx, p)
	}
	var progress []int
	rep, err := Fleet(context.Background(), f.proxies, fetch, f.exp, Options{
		Parallel: 3, Timeout: 50 * time.Millisecond, Now: fixedClock,
		Progress: func(done, total int) {
			if total != len(f.proxies) {
				t.Errorf("progress total = %d, want %d", total, len(f.proxies))
			}
			progress = append(progress, done)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fetched.Load("ztunnel-0001"); ok {
		t.Error("a pod that is not ready was read")
	}
	got := map[string]string{}
	for _, r := range rep.Proxies {
		got[r.Name] = string(r.Status) + " " + r.Reason + " " + strings.Join(r.Problems, "; ")
	}
	want := map[string]string{
		"ztunnel-0000": "match  ",
		"ztunnel-0001": "not-ready  pod Pending (not scheduled): not read",
		"ztunnel-0002": "unreadable PortForward pod istio-system/ztunnel-0002: port-forward to port 15000 refused: connection refused (after 3 attempts)",
		"ztunnel-0003": "unreadable Unparsable ztunnel config dump: invalid JSON: expected an object or an array",
		"ztunnel-0004": "nothing-to-verify  ",
		"ztunnel-0005": "unreadable Timeout no answer within 50ms: context deadline exceeded",
		"waypoint-0":   "match  ",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results mismatch (-want +got):\n%s", diff)
	}
	wantCounts := Counts{Total: 7, Match: 2, NothingToVerify: 1, Unreadable: 3, NotReady: 1}
	if diff := cmp.Diff(wantCounts, rep.Total); diff != "" {
		t.Errorf("counts mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{1, 2, 3, 4, 5, 6, 7}, progress); diff != "" {
		t.Errorf("progress mismatch (-want +got):\n%s", diff)
	}
	// Results keep the order of the proxies.
	for i := range f.proxies {
		if rep.Proxies[i].Name != f.proxies[i].Name {
			t.Fatalf("result %d is %s, want %s", i, rep.Proxies[i].Name, f.proxies[i].Name)
		}
	}
	if rep.OK() {
		t.Error("OK() = true with unreadable and not-ready proxies")
	}
}

func TestFleetCanceled(t *testing.T) {
	f := newFleet(t, 20)
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	fetch := func(ctx context.Context, p *mesh.Proxy) ([]byte, error) {
		if n.Add(1) == 3 {
			cancel()
		}
		return f.fetch(ctx, p)
	}
	rep, err := Fleet(ctx, f.proxies, fetch, f.exp, Options{Parallel: 1, Now: fixedClock})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fleet() error = %v, want context.Canceled", err)
	}
	if rep.Total.Total != len(f.proxies) || rep.Total.Match != 3 || rep.Total.Unreadable != len(f.proxies)-3 {
		t.Errorf("counts = %+v, want 3 read and the rest unreadable", rep.Total)
	}
	last := rep.Proxies[len(rep.Proxies)-1]
	if last.Reason != "Canceled" || last.Problems[0] != "not read: context canceled" {
		t.Errorf("last result = %+v, want canceled", last)
	}
}

func TestReportOK(t *testing.T) {
	match := Result{Kind: mesh.KindZtunnel, Status: StatusMatch}
	nothing := Result{Kind: mesh.KindZtunnel, Status: StatusNothingToVerify}
	stale := Result{Kind: mesh.KindSidecar, Status: StatusStale}
	tests := map[string]struct {
		results []Result
		cms     *ConfigMapSummary
		ok      bool
		match   int
	}{
		"every proxy matching passes":                         {results: []Result{match, match}, ok: true, match: 2},
		"nothing to verify does not fail, nor count":          {results: []Result{match, nothing}, ok: true, match: 1},
		"one stale proxy fails":                               {results: []Result{match, stale}, match: 1},
		"a stale ConfigMap fails even when proxies match":     {results: []Result{match}, cms: &ConfigMapSummary{Total: 1, Stale: []ConfigMapResult{{Namespace: "a"}}}, match: 1},
		"matching ConfigMaps and proxies pass":                {results: []Result{match}, cms: &ConfigMapSummary{Total: 1, Match: 1}, ok: true, match: 1},
		"an empty fleet passes: there is nothing to be wrong": {ok: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rep := NewReport(tc.results, Expectation{}, pkitest.Now)
			rep.RootConfigMaps = tc.cms
			if rep.OK() != tc.ok || rep.Total.Match != tc.match {
				t.Errorf("OK() = %v, match = %d; want %v, %d", rep.OK(), rep.Total.Match, tc.ok, tc.match)
			}
			if len(rep.Kinds) != len(mesh.Kinds) {
				t.Errorf("kinds = %d, want every kind", len(rep.Kinds))
			}
		})
	}
}

func TestDocument(t *testing.T) {
	results := []Result{
		{Kind: mesh.KindZtunnel, Name: "a", Status: StatusMatch, Roots: []string{}, Signers: []string{}},
		{Kind: mesh.KindZtunnel, Name: "b", Status: StatusNothingToVerify, Roots: []string{}, Signers: []string{}},
		{Kind: mesh.KindGateway, Name: "c", Status: StatusUnreadable, Roots: []string{}, Signers: []string{}},
	}
	rep := NewReport(results, Expectation{Source: "test"}, pkitest.Now)
	rep.Walk = Walk{Parallel: 32, Timeout: 30 * time.Second, Discovery: 1234567 * time.Microsecond, Read: 2 * time.Second}
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc Document
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.APIVersion != "meshca.io/v1alpha1" || doc.Kind != "FleetVerification" || doc.OK {
		t.Errorf("header = %s %s ok=%v", doc.APIVersion, doc.Kind, doc.OK)
	}
	names := func(rs []Result) (out []string) {
		for _, r := range rs {
			out = append(out, r.Name)
		}
		return out
	}
	if diff := cmp.Diff([]string{"b", "c"}, names(doc.Proxies)); diff != "" || doc.ProxiesListed != ListedNonMatching {
		t.Errorf("listed %s proxies mismatch (-want +got):\n%s", doc.ProxiesListed, diff)
	}
	if diff := cmp.Diff(WalkDocument{Parallel: 32, TimeoutSeconds: 30, DiscoverySeconds: 1.235, ReadSeconds: 2}, doc.Walk); diff != "" {
		t.Errorf("walk mismatch (-want +got):\n%s", diff)
	}
	if !strings.Contains(string(data), `"roots":[]`) {
		t.Errorf("an empty expectation must list roots as [], got %s", data)
	}
	rep.ListAll = true
	if doc := rep.Document(); doc.ProxiesListed != ListedAll || len(doc.Proxies) != 3 {
		t.Errorf("ListAll: listed %s, %d proxies; want all 3", doc.ProxiesListed, len(doc.Proxies))
	}
}

func TestConfigMaps(t *testing.T) {
	p := vt.NewRotation(t)
	oldPEM := string(p.OldRoot.Cert.Raw) // any bytes: only their hash is compared
	both := []string{fp(p.OldRoot), fp(p.NewRoot)}
	trustOf := func(fps ...string) mesh.RootConfigMap {
		return mesh.RootConfigMap{Trust: trustSet(fps...), Data: oldPEM}
	}
	cms := []mesh.RootConfigMap{
		withNS("a", trustOf(both...)),
		withNS("b", trustOf(fp(p.OldRoot))),
		withNS("c", mesh.RootConfigMap{Err: errors.New("configmap c/istio-ca-root-cert: no root-cert.pem key")}),
		withNS("d", mesh.RootConfigMap{Trust: trustSet(both...), Data: oldPEM + "\n"}),
	}
	exp := Expectation{Roots: sortedSet(append([]string(nil), both...))}
	exp.RootCertSHA256 = (&cms[0]).DataSHA256()
	got := ConfigMaps(cms, exp)
	want := &ConfigMapSummary{Total: 4, Match: 1, Stale: []ConfigMapResult{
		{Namespace: "b", Roots: []string{fp(p.OldRoot)}, Problems: []string{"missing root " + sfp(p.NewRoot)}},
		{Namespace: "c", Roots: []string{}, Problems: []string{"configmap c/istio-ca-root-cert: no root-cert.pem key"}},
		{Namespace: "d", Roots: exp.Roots, Problems: []string{"same roots but not the bytes of root-cert.pem: istiod has not reloaded the current cacerts"}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ConfigMaps() mismatch (-want +got):\n%s", diff)
	}
}

func withNS(ns string, cm mesh.RootConfigMap) mesh.RootConfigMap {
	cm.Namespace = ns
	return cm
}

func trustSet(fps ...string) proxy.Trust { return proxy.NewTrust(fps...) }
