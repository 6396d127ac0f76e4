package proxy

import (
	"crypto/x509"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/meshca/meshca/internal/pki"
)

// rotationPKI is an old and a new CA generation with the same subject names,
// as a rotation has them, and leafs under each.
type rotationPKI struct {
	oldRoot, newRoot *testCA
	oldInt, newInt   *testCA
	oldLeaf, newLeaf *x509.Certificate
}

const (
	idA = "spiffe://cluster.local/ns/ambient/sa/a"
	idB = "spiffe://cluster.local/ns/ambient/sa/b"
)

func newRotationPKI(t testing.TB) *rotationPKI {
	p := &rotationPKI{oldRoot: newRoot(t), newRoot: newRoot(t)}
	p.oldInt, p.newInt = p.oldRoot.intermediate(t), p.newRoot.intermediate(t)
	p.oldLeaf, p.newLeaf = p.oldInt.leaf(t, idA), p.newInt.leaf(t, idA)
	return p
}

// identitySummary is what the tests compare of an Identity.
type identitySummary struct {
	Name, State, Status string
	Legacy              bool
	Chain, Roots        []string
	ChainRoles          []pki.Role
	RootRoles           []pki.Role
	Trust               Trust
	Reported            []Reported
}

func summarize(id *Identity, withReported bool) identitySummary {
	s := identitySummary{Name: id.Name, State: id.State, Status: id.Status(), Legacy: id.Legacy,
		Chain: certFPs(id.Chain), Roots: certFPs(id.Roots), Trust: id.Trust()}
	for _, c := range id.Chain {
		s.ChainRoles = append(s.ChainRoles, c.Role)
		if withReported {
			s.Reported = append(s.Reported, c.Reported)
		}
	}
	for _, c := range id.Roots {
		s.RootRoles = append(s.RootRoles, c.Role)
	}
	return s
}

func TestReadZtunnel(t *testing.T) {
	p := newRotationPKI(t)
	chainNew := ztCerts(false, p.newLeaf, p.newInt.cert, p.newRoot.cert)
	entryA := map[string]any{"identity": idA, "state": "Available", "certChain": chainNew,
		"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)}
	wantA := identitySummary{
		Name: idA, State: "Available", Status: "Available",
		Chain:      fps(p.newLeaf, p.newInt.cert, p.newRoot.cert),
		Roots:      fps(p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert),
		ChainRoles: []pki.Role{pki.RoleLeaf, pki.RoleIntermediate, pki.RoleRoot},
		RootRoles:  []pki.Role{pki.RoleRoot, pki.RoleRoot, pki.RoleRoot},
		Trust:      NewTrust(fps(p.oldRoot.cert, p.newRoot.cert)...),
	}
	wantA.Trust.Duplicates = 1
	legacyChain := func(raw bool) []any { return ztCerts(raw, p.oldLeaf, p.oldInt.cert, p.oldRoot.cert) }
	wantLegacy := identitySummary{
		Name: idA, State: "Available", Status: "Available", Legacy: true,
		Chain:      fps(p.oldLeaf, p.oldInt.cert, p.oldRoot.cert),
		ChainRoles: []pki.Role{pki.RoleLeaf, pki.RoleIntermediate, pki.RoleRoot},
		Trust:      NewTrust(fps(p.oldRoot.cert)...),
	}
	unavailable := map[string]any{"identity": idB, "state": "Unavailable: signing gRPC error: connection refused", "certChain": []any{}, "rootCerts": []any{}}

	tests := map[string]struct {
		input any
		want  []identitySummary
	}{
		"a whole config dump with base64 PEM and rootCerts is read": {
			input: map[string]any{"workloads": []any{}, "services": []any{}, "config": map[string]any{"caAddress": "https://istiod.istio-system.svc:15012"}, "certificates": []any{entryA}},
			want:  []identitySummary{wantA},
		},
		"the bare certificates array is read the same": {
			input: []any{entryA},
			want:  []identitySummary{wantA},
		},
		"raw PEM as ztunnel wrote it before 1.22 is accepted": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": ztCerts(true, p.newLeaf, p.newInt.cert, p.newRoot.cert),
				"rootCerts": ztCerts(true, p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)}},
			want: []identitySummary{wantA},
		},
		"an entry without rootCerts (before 1.26) is legacy and trusts the last chain entry": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": legacyChain(true)}},
			want:  []identitySummary{wantLegacy},
		},
		"an empty rootCerts with a chain is legacy too, as istioctl decides": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": legacyChain(false), "rootCerts": []any{}}},
			want:  []identitySummary{wantLegacy},
		},
		"Initializing and Unavailable identities hold no certificate": {
			input: []any{unavailable, map[string]any{"identity": idA, "state": "Initializing", "certChain": []any{}, "rootCerts": []any{}}},
			want: []identitySummary{
				{Name: idB, State: "Unavailable: signing gRPC error: connection refused", Status: "Unavailable", Trust: NewTrust()},
				{Name: idA, State: "Initializing", Status: "Initializing", Trust: NewTrust()},
			},
		},
		"an empty certificates array is a ztunnel with nothing to verify": {
			input: map[string]any{"certificates": []any{}},
			want:  []identitySummary{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			z, err := ReadZtunnel(mustJSON(t, tc.input))
			if err != nil {
				t.Fatal(err)
			}
			got := []identitySummary{}
			for i := range z.Identities {
				got = append(got, summarize(&z.Identities[i], false))
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("identities (-want +got):\n%s", diff)
			}
			if z.Empty() != (len(tc.want) == 0) {
				t.Errorf("Empty() = %v", z.Empty())
			}
		})
	}
}

func TestReadZtunnelKeepsReportedFields(t *testing.T) {
	p := newRotationPKI(t)
	entry := ztCert(p.newLeaf, false)
	entry["serialNumber"] = "12345"
	entry["validFrom"] = "2026-05-31T12:00:00Z"
	entry["expirationTime"] = "2026-06-01T12:00:00Z"
	z, err := ReadZtunnel(mustJSON(t, []any{map[string]any{"identity": idA, "state": "Available", "certChain": []any{entry}}}))
	if err != nil {
		t.Fatal(err)
	}
	want := Reported{PEM: entry["pem"].(string), SerialNumber: "12345", ValidFrom: "2026-05-31T12:00:00Z", ExpirationTime: "2026-06-01T12:00:00Z"}
	if diff := cmp.Diff(want, z.Identities[0].Chain[0].Reported); diff != "" {
		t.Errorf("reported (-want +got):\n%s", diff)
	}
	if got, want := z.Identities[0].Chain[0].Serial, pki.Serial(p.newLeaf); got != want {
		t.Errorf("Serial = %s, want the certificate's own %s", got, want)
	}
}

func TestReadZtunnelErrors(t *testing.T) {
	p := newRotationPKI(t)
	good := ztCert(p.newLeaf, false)
	with := func(field string, value any) []any {
		c := ztCert(p.newLeaf, false)
		if value == nil {
			delete(c, field)
		} else {
			c[field] = value
		}
		return []any{map[string]any{"identity": idA, "state": "Available", "certChain": []any{c}}}
	}
	key := "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
	b64PEM := good["pem"].(string)

	tests := map[string]struct {
		input string
		want  []string
	}{
		"empty input is refused": {
			input: "  \n",
			want:  []string{"empty input"},
		},
		"text that is not JSON is refused": {
			input: "hello",
			want:  []string{"invalid JSON"},
		},
		"broken JSON is refused": {
			input: `{"certificates": [`,
			want:  []string{"invalid JSON"},
		},
		"an object without certificates is refused": {
			input: `{"workloads": []}`,
			want:  []string{`no "certificates" field`},
		},
		"an envoy dump points to the envoy command": {
			input: `{"configs": []}`,
			want:  []string{"envoy config dump", "meshca proxy certs"},
		},
		"certificates of the wrong JSON type are refused": {
			input: `{"certificates": {"identity": "x"}}`,
			want:  []string{"certificates: invalid JSON"},
		},
		"a missing identity is refused": {
			input: `[{"state": "Available", "certChain": []}]`,
			want:  []string{"certificates[0]: missing identity"},
		},
		"a missing state names the identity": {
			input: string(mustJSON(t, []any{map[string]any{"identity": idA, "certChain": []any{}}})),
			want:  []string{idA, "missing state"},
		},
		"a missing pem names the identity and entry": {
			input: string(mustJSON(t, with("pem", nil))),
			want:  []string{"ztunnel identity " + idA + ": certChain[0]: missing pem"},
		},
		"truncated base64 names the identity and entry": {
			input: string(mustJSON(t, with("pem", b64PEM[:len(b64PEM)-7]))),
			want:  []string{"ztunnel identity " + idA + ": certChain[0]: pem:", "base64"},
		},
		"base64 of something that is not PEM is refused": {
			input: string(mustJSON(t, with("pem", b64("not a certificate")))),
			want:  []string{"certChain[0]", "no PEM block"},
		},
		"a PEM that is not a certificate names the identity": {
			input: string(mustJSON(t, with("pem", b64(key)))),
			want:  []string{"ztunnel identity " + idA + ": certChain[0]", `"PRIVATE KEY", expected CERTIFICATE`},
		},
		"truncated raw PEM is refused": {
			input: string(mustJSON(t, with("pem", pemText(p.newLeaf)[:200]))),
			want:  []string{"certChain[0]", "PEM"},
		},
		"a PEM with two certificates in one entry is refused": {
			input: string(mustJSON(t, with("pem", b64(pemText(p.newLeaf, p.newInt.cert))))),
			want:  []string{"certChain[0]", "holds 2 certificates"},
		},
		"a bad root names the rootCerts entry": {
			input: string(mustJSON(t, []any{map[string]any{"identity": idA, "state": "Available",
				"certChain": []any{good}, "rootCerts": []any{good, map[string]any{"pem": "@@@"}}}})),
			want: []string{"ztunnel identity " + idA + ": rootCerts[1]: pem:"},
		},
		"a null certificate entry is refused": {
			input: string(mustJSON(t, []any{map[string]any{"identity": idA, "state": "Available", "certChain": []any{nil}}})),
			want:  []string{"certChain[0]: null entry"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ReadZtunnel([]byte(tc.input))
			wantErr(t, err, tc.want...)
		})
	}
}

func TestZtunnelWarnings(t *testing.T) {
	p := newRotationPKI(t)
	tests := map[string]struct {
		input any
		want  []string
	}{
		"a ztunnel without certificates has nothing to verify": {
			input: []any{},
			want:  []string{"ztunnel holds no certificates (no ambient workloads on its node): nothing to verify"},
		},
		"repeated roots are reported, not refused": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": ztCerts(false, p.newLeaf, p.newInt.cert),
				"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)}},
			want: []string{idA + ": rootCerts holds 3 entries for 2 distinct roots (1 duplicates); trust is compared as a set"},
		},
		"a legacy dump is flagged": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": ztCerts(true, p.oldLeaf, p.oldInt.cert, p.oldRoot.cert)}},
			want:  []string{"dump has no rootCerts (ztunnel before 1.26): the root is the last certChain entry and this ztunnel trusts a single root; upgrade ztunnel before rotating the CA"},
		},
		"a current dump with distinct roots has no warnings": {
			input: []any{map[string]any{"identity": idA, "state": "Available", "certChain": ztCerts(false, p.newLeaf, p.newInt.cert),
				"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert)}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			z, err := ReadZtunnel(mustJSON(t, tc.input))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, z.Warnings()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}
