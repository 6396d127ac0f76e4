package verify

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/proxy"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

func TestFreshnessOf(t *testing.T) {
	start := pkitest.Now
	leaf := &x509.Certificate{NotBefore: start, NotAfter: start.Add(24 * time.Hour)}
	ca := &x509.Certificate{NotBefore: start, NotAfter: start.Add(100 * 24 * time.Hour)}
	const day = 24 * time.Hour
	tests := map[string]struct {
		cert *x509.Certificate
		leaf bool
		at   time.Time
		warn time.Duration
		want Freshness
	}{
		"a leaf at half its lifetime is fresh":                       {cert: leaf, leaf: true, at: start.Add(12 * time.Hour), want: FreshnessOK},
		"a leaf just inside the refresh margin is fresh":             {cert: leaf, leaf: true, at: start.Add(14*time.Hour + 23*time.Minute), want: FreshnessOK},
		"a leaf past 60% of its lifetime is not refreshing":          {cert: leaf, leaf: true, at: start.Add(14*time.Hour + 25*time.Minute), want: FreshnessNotRefreshing},
		"a leaf past NotAfter is expired":                            {cert: leaf, leaf: true, at: start.Add(25 * time.Hour), want: FreshnessExpired},
		"a leaf before NotBefore is not yet valid":                   {cert: leaf, leaf: true, at: start.Add(-time.Minute), want: FreshnessNotYetValid},
		"a leaf is never expiring, whatever the warning window":      {cert: leaf, leaf: true, at: start.Add(time.Hour), warn: 30 * day, want: FreshnessOK},
		"a CA past half its lifetime is not 'not refreshing'":        {cert: ca, at: start.Add(80 * day), want: FreshnessOK},
		"a CA within the warning window is expiring":                 {cert: ca, at: start.Add(80 * day), warn: 30 * day, want: FreshnessExpiring},
		"a CA exactly at the edge of the window is expiring":         {cert: ca, at: start.Add(70 * day), warn: 30 * day, want: FreshnessExpiring},
		"a CA outside the warning window is fresh":                   {cert: ca, at: start.Add(69 * day), warn: 30 * day, want: FreshnessOK},
		"a CA past NotAfter is expired, not expiring":                {cert: ca, at: start.Add(101 * day), warn: 30 * day, want: FreshnessExpired},
		"a CA before NotBefore is not yet valid":                     {cert: ca, at: start.Add(-time.Second), warn: 30 * day, want: FreshnessNotYetValid},
		"without a warning window a CA one day from expiry is fresh": {cert: ca, at: start.Add(99 * day), want: FreshnessOK},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := FreshnessOf(tc.cert, tc.leaf, tc.at, tc.warn); got != tc.want {
				t.Errorf("FreshnessOf() = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRefreshDeadline(t *testing.T) {
	c := &x509.Certificate{NotBefore: pkitest.Now, NotAfter: pkitest.Now.Add(2 * time.Minute)}
	if got, want := RefreshDeadline(c), pkitest.Now.Add(72*time.Second); !got.Equal(want) {
		t.Errorf("RefreshDeadline() of a 2m leaf = %s, want %s (60%% of its lifetime)", got, want)
	}
	// What istiod signs for SECRET_TTL=2m at pkitest.Now: NotBefore two
	// minutes earlier. The agent renews it 60 s after receiving it; the
	// deadline is 60% of the 2 minutes it was issued for, not 60% of the
	// 4 minutes between NotBefore and NotAfter (24 s after issuance).
	issued := &x509.Certificate{NotBefore: pkitest.Now.Add(-IstiodBackdate), NotAfter: pkitest.Now.Add(2 * time.Minute)}
	if got, want := RefreshDeadline(issued), pkitest.Now.Add(72*time.Second); !got.Equal(want) {
		t.Errorf("RefreshDeadline() of a 2m leaf from istiod = %s, want %s (60%% of its TTL after issuance)", got, want)
	}
	if FreshnessOf(issued, true, pkitest.Now.Add(60*time.Second), 0) != FreshnessOK {
		t.Error("a 2m leaf from istiod, 60 s after issuance (when the agent renews it), is not fresh")
	}
}

// TestCheckFreshness runs the proxy checks with an injected clock: leafs
// issued an hour before pkitest.Now for 24h, the rotation's CAs valid for
// years (pki defaults: root 3650 days, intermediate 730).
func TestCheckFreshness(t *testing.T) {
	p := vt.NewRotation(t)
	leafA, leafB := vt.Leaf(t, p.OldInt, idA), vt.Leaf(t, p.OldInt, idB)
	future := pkitest.Leaf(t, p.OldInt, idA, pkitest.Now.Add(time.Hour), 24*time.Hour).Cert
	oldRoot, oldInt := p.OldRoot.Cert, p.OldInt.Cert
	exp := Expectation{Roots: []string{fp(p.OldRoot)}, Signer: fp(p.OldInt)}
	warn := exp
	warn.WarnDays = 800 // the intermediate (730 days) is inside, the root (3650) is not
	ztunnel := func(leafs ...*x509.Certificate) []byte {
		var ids []vt.ZtunnelIdentity
		for _, l := range leafs {
			ids = append(ids, vt.ZtunnelIdentity{Name: l.URIs[0].String(), Chain: certs(l, oldInt), Roots: certs(oldRoot)})
		}
		return vt.ZtunnelDump(ids...)
	}
	intExpiry := oldInt.NotAfter.UTC().Format(time.RFC3339)
	intDays := int(oldInt.NotAfter.Sub(pkitest.Now).Hours() / 24)
	notRefreshing := "is past its refresh point (60% of its lifetime): the proxy is not renewing it"

	tests := map[string]struct {
		dump     []byte
		envoy    bool
		exp      Expectation
		at       time.Time
		status   Status
		problems []string
	}{
		"a ztunnel whose leafs are an hour old matches": {
			dump: ztunnel(leafA, leafB), exp: exp, at: pkitest.Now, status: StatusMatch,
		},
		"a ztunnel whose leafs are 14h old (58% of 24h) still matches": {
			dump: ztunnel(leafA, leafB), exp: exp, at: pkitest.Now.Add(13 * time.Hour), status: StatusMatch,
		},
		"a ztunnel whose leafs are 15h old (62% of 24h) is not refreshing, both named": {
			dump: ztunnel(leafA, leafB), exp: exp, at: pkitest.Now.Add(14 * time.Hour), status: StatusNotRefreshing,
			problems: []string{"leafs of 2 identities are past their refresh point (60% of their lifetime): the proxy is not renewing them (" + idA + ", " + idB + ")"},
		},
		"a ztunnel with one old leaf names that identity": {
			dump: ztunnel(leafA, pkitest.Leaf(t, p.OldInt, idB, pkitest.Now.Add(12*time.Hour), 24*time.Hour).Cert), exp: exp,
			at: pkitest.Now.Add(14 * time.Hour), status: StatusNotRefreshing,
			problems: []string{"leaf of identity " + idA + " " + notRefreshing},
		},
		"an expired leaf makes the proxy not refreshing": {
			dump: ztunnel(leafA), exp: exp, at: pkitest.Now.Add(48 * time.Hour), status: StatusNotRefreshing,
			problems: []string{"leaf of identity " + idA + " expired at " + leafA.NotAfter.UTC().Format(time.RFC3339)},
		},
		"a leaf not yet valid is stale and blames the clocks": {
			dump: ztunnel(future), exp: exp, at: pkitest.Now, status: StatusStale,
			problems: []string{"leaf of identity " + idA + " is not valid before " + future.NotBefore.UTC().Format(time.RFC3339) + ": check the clocks of istiod and this node"},
		},
		"an intermediate inside --warn-days makes the proxy expiring, once for all identities": {
			dump: ztunnel(leafA, leafB), exp: warn, at: pkitest.Now, status: StatusExpiring,
			problems: []string{fmt.Sprintf("intermediate %s expires in %d days, at %s (within --warn-days 800)", sfp(p.OldInt), intDays, intExpiry)},
		},
		"not refreshing outranks expiring, and both are reported": {
			dump: ztunnel(leafA), exp: warn, at: pkitest.Now.Add(14 * time.Hour), status: StatusNotRefreshing,
			problems: []string{
				"leaf of identity " + idA + " " + notRefreshing,
				fmt.Sprintf("intermediate %s expires in %d days, at %s (within --warn-days 800)", sfp(p.OldInt), int(oldInt.NotAfter.Sub(pkitest.Now.Add(14*time.Hour)).Hours()/24), intExpiry),
			},
		},
		"stale outranks not refreshing": {
			dump: ztunnel(leafA), exp: Expectation{Roots: []string{fp(p.NewRoot)}}, at: pkitest.Now.Add(14 * time.Hour), status: StatusStale,
			problems: []string{"missing root " + sfp(p.NewRoot), "extra root " + sfp(p.OldRoot), "leaf of identity " + idA + " " + notRefreshing,
				"leaf of identity " + idA + " chains to root " + sfp(p.OldRoot) + ", not an expected root"},
		},
		"an expired intermediate in the chain is stale": {
			dump: ztunnel(leafA), exp: exp, at: oldInt.NotAfter.Add(time.Hour), status: StatusStale,
			problems: []string{"leaf of identity " + idA + " expired at " + leafA.NotAfter.UTC().Format(time.RFC3339), "intermediate " + sfp(p.OldInt) + " expired at " + intExpiry},
		},
		"an envoy whose leaf is past its refresh point is not refreshing": {
			dump: vt.EnvoyDump(certs(leafA, oldInt), certs(oldRoot)), envoy: true, exp: exp, at: pkitest.Now.Add(14 * time.Hour), status: StatusNotRefreshing,
			problems: []string{"leaf of identity " + idA + " " + notRefreshing},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := ztunnelPod
			if tc.envoy {
				pod = waypointPod
			}
			got := Check(&pod, tc.dump, tc.exp, tc.at)
			if got.Status != tc.status {
				t.Errorf("status = %s, want %s (problems %q)", got.Status, tc.status, got.Problems)
			}
			if len(got.Leafs) == 0 {
				t.Errorf("no leafs reported, want one per identity holding a certificate")
			}
			if diff := cmp.Diff(tc.problems, got.Problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			for _, l := range got.Leafs {
				if want := FreshnessOf(certByIdentity(t, tc.dump, tc.envoy, l.Identity), true, tc.at, 0); l.Freshness != want || l.NotAfter.IsZero() {
					t.Errorf("leaf %s: freshness %s, want %s (notAfter %s)", l.Identity, l.Freshness, want, l.NotAfter)
				}
			}
			if got.Status.Failing() != (tc.status != StatusMatch) {
				t.Errorf("Failing() = %v for %s", got.Status.Failing(), got.Status)
			}
		})
	}
}

// certByIdentity finds the leaf of identity in a dump, through the proxy
// package's readers.
func certByIdentity(t *testing.T, dump []byte, envoy bool, identity string) *x509.Certificate {
	t.Helper()
	if envoy {
		e, err := proxy.ReadEnvoy(dump)
		if err != nil {
			t.Fatal(err)
		}
		id := e.Workload()
		return id.Leaf().X509
	}
	z, err := proxy.ReadZtunnel(dump)
	if err != nil {
		t.Fatal(err)
	}
	for i := range z.Identities {
		if z.Identities[i].Name == identity {
			return z.Identities[i].Leaf().X509
		}
	}
	t.Fatalf("no identity %s in the dump", identity)
	return nil
}
