package pki_test

import (
	"testing"

	"github.com/meshca/meshca/internal/pki"
)

// TestPoolCertificates reads a caBundle as the API server does: text around
// the blocks and blocks of other types are skipped, where ParseCertificates
// refuses the same bytes.
func TestPoolCertificates(t *testing.T) {
	a, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.EncodeKey(a.Key)
	if err != nil {
		t.Fatal(err)
	}
	data := append([]byte("# root at install time\n"), pki.EncodeCert(a.Cert)...)
	data = append(data, key...)
	data = append(data, []byte("trailing words\n")...)
	data = append(data, pki.EncodeCert(b.Cert)...)
	got := pki.PoolCertificates(data)
	if len(got) != 2 || pki.Fingerprint(got[0]) != pki.Fingerprint(a.Cert) || pki.Fingerprint(got[1]) != pki.Fingerprint(b.Cert) {
		t.Errorf("PoolCertificates() = %d certificates, want the two roots in order", len(got))
	}
	if _, err := pki.ParseCertificates("bundle", data); err == nil {
		t.Error("ParseCertificates accepted a bundle with text and a key block in it")
	}
	if got := pki.PoolCertificates([]byte("not PEM")); len(got) != 0 {
		t.Errorf("PoolCertificates(garbage) = %d certificates, want none", len(got))
	}
}
