package verify

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

const (
	idA = "spiffe://cluster.local/ns/ambient/sa/a"
	idB = "spiffe://cluster.local/ns/ambient/sa/b"
	idC = "spiffe://cluster.local/ns/ambient/sa/c"
	idD = "spiffe://cluster.local/ns/ambient/sa/d"
)

func fp(c *pki.CA) string { return pki.Fingerprint(c.Cert) }

func sfp(c *pki.CA) string { return fp(c)[:12] }

func certs(cs ...*x509.Certificate) []*x509.Certificate { return cs }

var (
	ztunnelPod = mesh.Proxy{Kind: mesh.KindZtunnel, Namespace: "istio-system", Name: "ztunnel-a", Node: "node-1", Ready: true,
		Owner: mesh.Owner{Kind: "DaemonSet", Name: "ztunnel"}}
	waypointPod = mesh.Proxy{Kind: mesh.KindWaypoint, Namespace: "ambient", Name: "waypoint-7d9", Node: "node-2", Ready: true, XDSAgent: true,
		Owner: mesh.Owner{Kind: "Deployment", Name: "waypoint"}}
	sidecarPod = mesh.Proxy{Kind: mesh.KindSidecar, Namespace: "bookinfo", Name: "reviews-v1-abc", Node: "node-3", Ready: true,
		Owner: mesh.Owner{Kind: "Deployment", Name: "reviews-v1"}}
)

func TestCheck(t *testing.T) {
	p := vt.NewRotation(t)
	leafOldA, leafOldB := vt.Leaf(t, p.OldInt, idA), vt.Leaf(t, p.OldInt, idB)
	leafOldC, leafOldD := vt.Leaf(t, p.OldInt, idC), vt.Leaf(t, p.OldInt, idD)
	leafNewA := vt.Leaf(t, p.NewInt, idA)
	oldRoot, newRoot, oldInt, newInt := p.OldRoot.Cert, p.NewRoot.Cert, p.OldInt.Cert, p.NewInt.Cert
	// Phase 1 (trust): both roots, the old signer. Phase 2 (issue): both
	// roots, the new signer.
	trust := Expectation{Source: "test", Roots: sortedSet([]string{fp(p.OldRoot), fp(p.NewRoot)}), Signer: fp(p.OldInt)}
	issue := Expectation{Source: "test", Roots: trust.Roots, Signer: fp(p.NewInt)}
	onlyOld := sortedSet([]string{fp(p.OldRoot)})
	both := trust.Roots
	ztunnelMeta := func(r Result) Result {
		r.Kind, r.Namespace, r.Name, r.Node, r.Owner = mesh.KindZtunnel, "istio-system", "ztunnel-a", "node-1", &mesh.Owner{Kind: "DaemonSet", Name: "ztunnel"}
		return r
	}
	envoyMeta := func(pod mesh.Proxy, r Result) Result {
		o := pod.Owner
		r.Kind, r.Namespace, r.Name, r.Node, r.Owner = pod.Kind, pod.Namespace, pod.Name, pod.Node, &o
		return r
	}

	tests := map[string]struct {
		proxy mesh.Proxy
		dump  []byte
		exp   Expectation
		want  Result
	}{
		"a ztunnel trusting both roots with leafs of the expected signer matches": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idB, Chain: certs(leafOldB, oldInt, oldRoot), Roots: certs(newRoot, oldRoot)},
			),
			exp:  trust,
			want: ztunnelMeta(Result{Status: StatusMatch, Identities: 2, Roots: both, Signers: []string{fp(p.OldInt)}}),
		},
		"a ztunnel that has not received the new root is stale": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Roots: certs(oldRoot)},
				vt.ZtunnelIdentity{Name: idB, Chain: certs(leafOldB, oldInt, oldRoot), Roots: certs(oldRoot)},
			),
			exp: trust,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 2, Roots: onlyOld, Signers: []string{fp(p.OldInt)},
				Problems: []string{"missing root " + sfp(p.NewRoot)}}),
		},
		"a root missing for one identity only names that identity": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idB, Chain: certs(leafOldB, oldInt, oldRoot), Roots: certs(oldRoot)},
			),
			exp: trust,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 2, Roots: both, Signers: []string{fp(p.OldInt)},
				Problems: []string{"missing root " + sfp(p.NewRoot) + " for identity " + idB}}),
		},
		"a leaf still from the old signer in phase 2 is stale": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafNewA, newInt, newRoot), Roots: certs(oldRoot, newRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idB, Chain: certs(leafOldB, oldInt, oldRoot), Roots: certs(oldRoot, newRoot)},
			),
			exp: issue,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 2, Roots: both, DuplicateRoots: []string{fp(p.NewRoot)},
				Signers:  sortedSet([]string{fp(p.OldInt), fp(p.NewInt)}),
				Problems: []string{"leaf of identity " + idB + " signed by " + sfp(p.OldInt) + ", want " + sfp(p.NewInt)},
				Notes:    []string{"root " + sfp(p.NewRoot) + " is listed more than once (ztunnel does not de-duplicate roots; trust is compared as a set)"}}),
		},
		"duplicate roots are reported, never failed": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafNewA, newInt, newRoot), Roots: certs(oldRoot, newRoot, newRoot)},
			),
			exp: issue,
			want: ztunnelMeta(Result{Status: StatusMatch, Identities: 1, Roots: both, DuplicateRoots: []string{fp(p.NewRoot)},
				Signers: []string{fp(p.NewInt)},
				Notes:   []string{"root " + sfp(p.NewRoot) + " is listed more than once (ztunnel does not de-duplicate roots; trust is compared as a set)"}}),
		},
		"many identities with the same old signer are reported once": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idB, Chain: certs(leafOldB, oldInt), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idC, Chain: certs(leafOldC, oldInt), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idD, Chain: certs(leafOldD, oldInt), Roots: certs(oldRoot, newRoot)},
			),
			exp: issue,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 4, Roots: both, Signers: []string{fp(p.OldInt)},
				Problems: []string{"leafs of 4 identities signed by " + sfp(p.OldInt) + ", want " + sfp(p.NewInt) + " (" + idA + ", " + idB + ", " + idC + ", and 1 more)"}}),
		},
		"a ztunnel without certificates has nothing to verify, and does not match": {
			proxy: ztunnelPod,
			dump:  vt.ZtunnelDump(),
			exp:   trust,
			want: ztunnelMeta(Result{Status: StatusNothingToVerify, Roots: []string{}, Signers: []string{},
				Notes: []string{"no certificates: no ambient workload on its node"}}),
		},
		"an Unavailable identity is stale, with its reason": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Roots: certs(oldRoot, newRoot)},
				vt.ZtunnelIdentity{Name: idB, State: "Unavailable: signing gRPC error (The service is currently unavailable)"},
				vt.ZtunnelIdentity{Name: idC, State: "Initializing"},
			),
			exp: trust,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 3, Roots: both, Signers: []string{fp(p.OldInt)},
				Problems: []string{
					"identity " + idB + " Unavailable: signing gRPC error (The service is currently unavailable)",
					"identity " + idC + " Initializing: no certificate yet",
				}}),
		},
		"an extra root fails unless extra roots are allowed": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafNewA, newInt, newRoot), Roots: certs(oldRoot, newRoot)},
			),
			exp: Expectation{Roots: []string{fp(p.NewRoot)}, Signer: fp(p.NewInt)},
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 1, Roots: both, Signers: []string{fp(p.NewInt)},
				Problems: []string{"extra root " + sfp(p.OldRoot)}}),
		},
		"an extra root is accepted when allowed": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafNewA, newInt, newRoot), Roots: certs(oldRoot, newRoot)},
			),
			exp:  Expectation{Roots: []string{fp(p.NewRoot)}, AllowExtraRoots: true},
			want: ztunnelMeta(Result{Status: StatusMatch, Identities: 1, Roots: both, Signers: []string{fp(p.NewInt)}}),
		},
		"a leaf that chains to an unexpected root fails even when extra roots are allowed": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Roots: certs(oldRoot, newRoot)},
			),
			exp: Expectation{Roots: []string{fp(p.NewRoot)}, AllowExtraRoots: true},
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 1, Roots: both, Signers: []string{fp(p.OldInt)},
				Problems: []string{"leaf of identity " + idA + " chains to root " + sfp(p.OldRoot) + ", not an expected root"}}),
		},
		"a leaf that chains to no trusted root is stale": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafNewA, newInt, newRoot), Roots: certs(oldRoot)},
			),
			exp: Expectation{Roots: onlyOld},
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 1, Roots: onlyOld, Signers: []string{fp(p.NewInt)},
				Problems: []string{"leaf of identity " + idA + " does not chain to any root it trusts"}}),
		},
		"a legacy ztunnel trusts one root and cannot hold both": {
			proxy: ztunnelPod,
			dump: vt.ZtunnelDump(
				vt.ZtunnelIdentity{Name: idA, Chain: certs(leafOldA, oldInt, oldRoot), Legacy: true},
			),
			exp: trust,
			want: ztunnelMeta(Result{Status: StatusStale, Identities: 1, Roots: onlyOld, Signers: []string{fp(p.OldInt)},
				Problems: []string{"missing root " + sfp(p.NewRoot)},
				Notes:    []string{"ztunnel before 1.26 (no rootCerts): it trusts a single root, the last certChain entry; upgrade it before rotating the CA"}}),
		},
		"a dump that does not parse makes the proxy unreadable": {
			proxy: ztunnelPod,
			dump:  []byte(`{"certificates": [{"identity": "x"}]}`),
			exp:   trust,
			want: ztunnelMeta(Result{Status: StatusUnreadable, Reason: ReasonUnparsable, Roots: []string{}, Signers: []string{},
				Problems: []string{"ztunnel identity x: missing state"}}),
		},
		"an envoy dump from a ztunnel pod is unreadable": {
			proxy: ztunnelPod,
			dump:  vt.EnvoyDump(certs(leafOldA, oldInt), certs(oldRoot)),
			exp:   trust,
			want: ztunnelMeta(Result{Status: StatusUnreadable, Reason: ReasonUnparsable, Roots: []string{}, Signers: []string{},
				Problems: []string{"ztunnel config dump: this is an envoy config dump: use `meshca proxy certs`"}}),
		},
		"a waypoint whose ROOTCA holds both roots matches": {
			proxy: waypointPod,
			dump:  vt.EnvoyDump(certs(leafNewA, newInt, newRoot), certs(newRoot, oldRoot)),
			exp:   issue,
			want:  envoyMeta(waypointPod, Result{Status: StatusMatch, Identities: 1, Roots: both, Signers: []string{fp(p.NewInt)}}),
		},
		"a sidecar without the agent flag that lacks the new root is stale, and says why": {
			proxy: sidecarPod,
			dump:  vt.EnvoyDump(certs(leafOldA, oldInt, oldRoot), certs(oldRoot)),
			exp:   trust,
			want: envoyMeta(sidecarPod, Result{Status: StatusStale, Identities: 1, Roots: onlyOld, Signers: []string{fp(p.OldInt)},
				Problems: []string{"missing root " + sfp(p.NewRoot)},
				Notes:    []string{"PROXY_CONFIG_XDS_AGENT is not set on this pod: it gets new roots only when it re-signs (about 12h) or restarts"}}),
		},
		"an envoy without a workload certificate is stale": {
			proxy: waypointPod,
			dump:  vt.EnvoyDump(nil, certs(oldRoot, newRoot)),
			exp:   trust,
			want: envoyMeta(waypointPod, Result{Status: StatusStale, Roots: both, Signers: []string{},
				Problems: []string{"no workload certificate: no active default secret"}}),
		},
		"an envoy whose certificate is still warming and that has no ROOTCA is stale": {
			proxy: waypointPod,
			dump:  vt.EnvoyWarmingDump(nil),
			exp:   trust,
			want: envoyMeta(waypointPod, Result{Status: StatusStale, Identities: 1, Roots: []string{}, Signers: []string{},
				Problems: []string{
					"trusts no root: no active ROOTCA secret",
					"no workload certificate yet: the default secret is still warming",
					"missing root " + sfp(p.OldRoot),
					"missing root " + sfp(p.NewRoot),
				}}),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Check(&tc.proxy, tc.dump, tc.exp, pkitest.Now)
			want := tc.want
			// Missing roots are listed in fingerprint order; leafs are
			// checked in TestCheckFreshness.
			if diff := cmp.Diff(want, got, sortProblems(name), cmpopts.IgnoreFields(Result{}, "Leafs")); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// sortProblems keeps the order of problems except for the missing roots of
// the warming case, whose order follows the (random) fingerprints.
func sortProblems(name string) cmp.Option {
	return cmp.FilterPath(func(p cmp.Path) bool {
		return name == "an envoy whose certificate is still warming and that has no ROOTCA is stale" && p.Last().String() == ".Problems"
	}, cmp.Transformer("sort", func(in []string) []string { return sortedSet(append([]string(nil), in...)) }))
}

func TestCheckExpiredLeaf(t *testing.T) {
	p := vt.NewRotation(t)
	leaf := vt.Leaf(t, p.OldInt, idA)
	exp := Expectation{Roots: []string{fp(p.OldRoot)}, Signer: fp(p.OldInt)}
	dump := vt.ZtunnelDump(vt.ZtunnelIdentity{Name: idA, Chain: certs(leaf, p.OldInt.Cert), Roots: certs(p.OldRoot.Cert)})
	got := Check(&ztunnelPod, dump, exp, pkitest.Now.Add(48*time.Hour))
	want := []string{"leaf of identity " + idA + " expired at " + leaf.NotAfter.UTC().Format(time.RFC3339)}
	// An expired leaf is one its proxy did not renew in time.
	if got.Status != StatusNotRefreshing || !cmp.Equal(got.Problems, want) {
		t.Errorf("Check() = %s %q, want not-refreshing %q", got.Status, got.Problems, want)
	}
}

func TestParseFingerprint(t *testing.T) {
	const hex = "3f2a0c1d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
	tests := map[string]struct {
		in   string
		want string
		err  bool
	}{
		"meshca's form is kept":                         {in: hex, want: hex},
		"openssl's uppercase colon form is accepted":    {in: "SHA256 Fingerprint=3F:2A:0C:1D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09:1A:2B:3C:4D:5E:6F:70:81:92:A3:B4:C5:D6:E7:F8:09", want: hex},
		"surrounding space is ignored":                  {in: " " + hex + "\n", want: hex},
		"a short fingerprint is refused":                {in: hex[:12], err: true},
		"a SHA-1 fingerprint is refused":                {in: hex[:40], err: true},
		"something that is not hex is refused":          {in: "z" + hex[1:], err: true},
		"an empty fingerprint is refused":               {in: "", err: true},
		"a fingerprint one digit too long is refused":   {in: hex + "0", err: true},
		"a subject name instead of a hash is refused":   {in: "CN=Root CA,O=Istio", err: true},
		"hex with dashes is refused, not misread":       {in: hex[:10] + "-" + hex[11:], err: true},
		"uppercase without colons is accepted as well":  {in: "3F2A0C1D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6F708192A3B4C5D6E7F809", want: hex},
		"a colon form with a missing digit is refused":  {in: "3F:2A:0C", err: true},
		"whitespace inside the fingerprint is refused":  {in: hex[:32] + " " + hex[32:], err: true},
		"an openssl prefix with a bad value is refused": {in: "SHA256 Fingerprint=XYZ", err: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseFingerprint(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("ParseFingerprint(%q) error = %v, want error %v", tc.in, err, tc.err)
			}
			if got != tc.want {
				t.Errorf("ParseFingerprint(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestNewExpectation(t *testing.T) {
	a := "3f2a0c1d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
	b := "0b2a0c1d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
	got, err := NewExpectation("flags", []string{a, b, a}, a)
	if err != nil {
		t.Fatal(err)
	}
	want := Expectation{Source: "flags", Roots: []string{b, a}, Signer: a}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("NewExpectation() mismatch (-want +got):\n%s", diff)
	}
	_, err = NewExpectation("flags", []string{"nope", a}, "bad")
	if err == nil || !contains(err.Error(), `root fingerprint "nope"`, `signer fingerprint "bad"`) {
		t.Errorf("NewExpectation() error = %v, want both bad fingerprints named", err)
	}
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
