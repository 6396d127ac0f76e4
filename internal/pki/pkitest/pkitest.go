// Package pkitest makes CA material for tests: roots, intermediates and
// SPIFFE leaf certificates generated on the fly (nothing ever expires in a
// checked-in fixture), plus bundle directories in the Makefile layout.
package pkitest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// Now is the fixed clock of generated material and of tests that use it.
var Now = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// Root returns a new root CA of key type kt, valid at Now.
func Root(t testing.TB, kt pki.KeyType) *pki.CA {
	t.Helper()
	ca, err := pki.NewRoot(pki.RootOptions{KeyType: kt, Now: Now})
	if err != nil {
		t.Fatalf("new root: %v", err)
	}
	return ca
}

// Intermediate returns a new signing CA for cluster under root.
func Intermediate(t testing.TB, root *pki.CA, kt pki.KeyType, cluster string) *pki.CA {
	t.Helper()
	ca, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: cluster, KeyType: kt, Now: Now})
	if err != nil {
		t.Fatalf("new intermediate: %v", err)
	}
	return ca
}

// Leaf returns a workload certificate for the SPIFFE id, signed by ca and
// valid for ttl from notBefore, like the ones istiod issues.
func Leaf(t testing.TB, ca *pki.CA, spiffeID string, notBefore time.Time, ttl time.Duration) *pki.CA {
	t.Helper()
	key, err := pki.GenerateKey(pki.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	return issue(t, tmpl, ca, key)
}

// serial is a random non-zero serial number.
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return n.Add(n, big.NewInt(1))
}

// issue signs tmpl for key with parent (nil: self-signed).
func issue(t testing.TB, tmpl *x509.Certificate, parent *pki.CA, key crypto.Signer) *pki.CA {
	t.Helper()
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pki.CA{Cert: cert, Key: key}
}

// Bundle returns the Makefile-layout bundle of intermediate under root.
func Bundle(t testing.TB, root, intermediate *pki.CA) *bundle.Bundle {
	t.Helper()
	b, err := bundle.FromCA(root, intermediate)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WriteBundle writes b into a new directory under t.TempDir and returns it.
func WriteBundle(t testing.TB, b *bundle.Bundle) string {
	t.Helper()
	dir := t.TempDir()
	if err := b.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	b.Source = dir
	return dir
}

// CA issues a CA certificate for key under parent (nil: self-signed), with
// the tools/certs profile edited by edit: the way tests make material meshca
// itself refuses to generate (pathlen 0 roots, RSA-1024 keys, intermediates
// outliving their root).
func CA(t testing.TB, parent *pki.CA, key crypto.Signer, edit func(*x509.Certificate)) *pki.CA {
	t.Helper()
	sn := serial()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{"Istio"}, CommonName: "Test CA " + sn.Text(16)},
		NotBefore:             Now.Add(-time.Hour),
		NotAfter:              Now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
	}
	if edit != nil {
		edit(tmpl)
	}
	return issue(t, tmpl, parent, key)
}

// Key returns a new key of type kt.
func Key(t testing.TB, kt pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(kt)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RSAKey returns a new RSA key of any size, including sizes meshca refuses.
func RSAKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// WriteRoot writes root into a new directory as root-cert.pem and
// root-key.pem and returns the directory.
func WriteRoot(t testing.TB, root *pki.CA) string {
	t.Helper()
	dir := t.TempDir()
	if err := bundle.WriteRoot(dir, root, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

// DSARootDir returns a directory holding a DSA root (root-cert.pem,
// root-key.pem), made once with openssl since Go cannot create DSA
// certificates (testdata/dsa-root/README.md).
func DSARootDir(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "testdata", "dsa-root")
	out := t.TempDir()
	for _, f := range []string{bundle.RootCertFile, bundle.RootKeyFile} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
