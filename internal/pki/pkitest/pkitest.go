// Package pkitest makes CA material for tests: roots, intermediates and
// SPIFFE leaf certificates generated on the fly (nothing ever expires in a
// checked-in fixture), plus bundle directories in the Makefile layout.
package pkitest

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
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
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
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
