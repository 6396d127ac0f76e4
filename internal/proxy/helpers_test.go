package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"flag"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/pki"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// now is the injected clock of every test.
var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// golden compares got with testdata/golden/name, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got), run go test -update if intended:\n%s", path, diff)
	}
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// testCA is a CA generated for a test: ECDSA P-256 to keep tests fast.
// Generations reuse subject names, as tools/certs does (facts §6).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// nextSerial is a random 128-bit serial, as istiod and tools/certs use.
func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err)
	}
	return n
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub any, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newRoot makes a self-signed root valid for a century around now.
func newRoot(t testing.TB) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"Istio"}, CommonName: "Root CA"},
		NotBefore:             now.AddDate(-1, 0, 0),
		NotAfter:              now.AddDate(100, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	return &testCA{cert: sign(t, tmpl, tmpl, &key.PublicKey, key), key: key}
}

// intermediate makes an intermediate CA signed by ca.
func (ca *testCA) intermediate(t testing.TB) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"Istio"}, CommonName: "Intermediate CA", Locality: []string{"east"}},
		NotBefore:             now.AddDate(-1, 0, 0),
		NotAfter:              now.AddDate(50, 0, 0),
		IsCA:                  true,
		MaxPathLenZero:        true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	return &testCA{cert: sign(t, tmpl, ca.cert, &key.PublicKey, ca.key), key: key}
}

// leaf makes a workload certificate for a SPIFFE ID, as istiod issues it.
func (ca *testCA) leaf(t testing.TB, spiffeID string) *x509.Certificate {
	t.Helper()
	return ca.leafValid(t, spiffeID, now.Add(-12*time.Hour), now.AddDate(10, 0, 0))
}

func (ca *testCA) leafValid(t testing.TB, spiffeID string, from, to time.Time) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		NotBefore:             from,
		NotAfter:              to,
		URIs:                  []*url.URL{u},
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	return sign(t, tmpl, ca.cert, &key.PublicKey, ca.key)
}

func pemText(certs ...*x509.Certificate) string { return string(pki.EncodeCerts(certs...)) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// ztCert is a ztunnel certificate entry; raw selects the pre-1.22 raw PEM.
func ztCert(c *x509.Certificate, raw bool) map[string]any {
	p := pemText(c)
	if !raw {
		p = b64(p)
	}
	return map[string]any{
		"pem":            p,
		"serialNumber":   c.SerialNumber.String(),
		"validFrom":      c.NotBefore.UTC().Format(time.RFC3339),
		"expirationTime": c.NotAfter.UTC().Format(time.RFC3339),
	}
}

func ztCerts(raw bool, certs ...*x509.Certificate) []any {
	out := []any{}
	for _, c := range certs {
		out = append(out, ztCert(c, raw))
	}
	return out
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// envoySecret is one dynamic secret of a SecretsConfigDump, snake_case.
func envoyTLSSecret(name string, chain ...*x509.Certificate) map[string]any {
	return map[string]any{
		"name":         name,
		"version_info": "2026-05-31T12:00:00Z/1",
		"last_updated": "2026-05-31T12:00:00.000Z",
		"secret": map[string]any{
			"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
			"name":  name,
			"tls_certificate": map[string]any{
				"certificate_chain": map[string]any{"inline_bytes": b64(pemText(chain...))},
				"private_key":       map[string]any{"inline_bytes": b64("[redacted]")},
			},
		},
	}
}

func envoyCASecret(name string, roots ...*x509.Certificate) map[string]any {
	return map[string]any{
		"name":         name,
		"version_info": "2026-05-31T12:00:00Z/1",
		"last_updated": "2026-05-31T12:00:00.000Z",
		"secret": map[string]any{
			"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
			"name":  name,
			"validation_context": map[string]any{
				"trusted_ca": map[string]any{"inline_bytes": b64(pemText(roots...))},
			},
		},
	}
}

// camelJSON re-spells a snake_case document as istioctl -o json does.
func camelJSON(t testing.TB, v any) []byte {
	t.Helper()
	var generic any
	if err := json.Unmarshal(mustJSON(t, v), &generic); err != nil {
		t.Fatal(err)
	}
	return mustJSON(t, camelKeys(generic))
}

// fps maps certificates to fingerprints.
func fps(certs ...*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = pki.Fingerprint(c)
	}
	return out
}

// certFPs maps model certificates to fingerprints.
func certFPs(certs []Cert) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = c.Fingerprint
	}
	return out
}

// wantErr checks that err contains every fragment, or is nil when there are
// none.
func wantErr(t *testing.T, err error, fragments ...string) {
	t.Helper()
	if len(fragments) == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want one containing %q", fragments)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not contain %q", err, f)
		}
	}
}
