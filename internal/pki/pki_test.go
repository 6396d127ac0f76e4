package pki_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

func TestParseCertificatesRejectsBadInput(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	good := pki.EncodeCert(root.Cert)
	key, err := pki.EncodeKey(root.Key)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		data    []byte
		wantErr string
	}{
		"an empty file is refused":                                 {data: []byte("  \n"), wantErr: "f.pem: empty file"},
		"text without PEM is refused":                              {data: []byte("hello world\n"), wantErr: "f.pem: no PEM block found"},
		"a truncated PEM block is refused":                         {data: good[:len(good)/2], wantErr: "f.pem: no PEM block found"},
		"a truncated second block is refused":                      {data: append(bytes.Clone(good), good[:len(good)-30]...), wantErr: "f.pem: unparsable data after PEM block 1"},
		"base64 garbage inside a block is refused":                 {data: []byte("-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n"), wantErr: "f.pem: no PEM block found"},
		"a garbage block before a good one is refused":             {data: append([]byte("-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n"), good...), wantErr: "f.pem: PEM block 1 is malformed"},
		"junk before a block is refused":                           {data: append([]byte("junk\n"), good...), wantErr: "f.pem: unexpected data before PEM block 1"},
		"a private key where a certificate is expected is refused": {data: key, wantErr: `f.pem: PEM block 1 is "PRIVATE KEY", expected CERTIFICATE`},
		"valid base64 that is not DER is refused": {
			data:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not a certificate")}),
			wantErr: "f.pem: PEM block 1: x509:",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := pki.ParseCertificates("f.pem", tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseCertificatesKeepsOrderAndOffsets(t *testing.T) {
	a, b := pkitest.Root(t, pki.ECDSAP256), pkitest.Root(t, pki.ECDSAP256)
	data := append(append(pki.EncodeCert(a.Cert), '\n'), pki.EncodeCert(b.Cert)...)
	certs, err := pki.ParseCertificates("roots.pem", data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{pki.Fingerprint(a.Cert), pki.Fingerprint(b.Cert)}, pki.Fingerprints(certs)); diff != "" {
		t.Errorf("fingerprints (-want +got):\n%s", diff)
	}
	blocks, err := pki.DecodeBlocks("roots.pem", data)
	if err != nil {
		t.Fatal(err)
	}
	if got := data[blocks[1].Start:blocks[1].End]; !bytes.Equal(got, pki.EncodeCert(b.Cert)) {
		t.Errorf("block 2 bytes = %q, want the exact PEM of the second root", got)
	}
}

func TestReadFileBoundsMemoryOnHugeJunk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junk.pem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("junk-data-"), 1<<16)
	for written := 0; written < 50<<20; written += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = pki.ReadFile(path)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") {
		t.Fatalf("error = %v, want a size error", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("reading a 50 MB junk file allocated %d bytes, want a bounded read (< 8 MiB)", alloc)
	}
}

func TestNewRootFollowsTheMakefileProfile(t *testing.T) {
	for _, kt := range []pki.KeyType{pki.RSA2048, pki.ECDSAP256, pki.ECDSAP384} {
		t.Run(string(kt), func(t *testing.T) {
			root := pkitest.Root(t, kt)
			c := root.Cert
			if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != -1 {
				t.Errorf("basic constraints: IsCA=%v MaxPathLen=%d Zero=%v, want CA:TRUE without pathlen", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
			}
			wantKU := x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign
			if c.KeyUsage != wantKU {
				t.Errorf("key usage = %b, want %b", c.KeyUsage, wantKU)
			}
			if len(c.SubjectKeyId) == 0 {
				t.Error("no subject key identifier")
			}
			if pki.RoleOf(c) != pki.RoleRoot {
				t.Errorf("role = %s, want root", pki.RoleOf(c))
			}
			if got := c.Subject.Organization; len(got) != 1 || got[0] != "Istio" {
				t.Errorf("O = %v, want Istio", got)
			}
			if !strings.HasPrefix(c.Subject.CommonName, "Root CA 2026-11-01 ") {
				t.Errorf("CN = %q, want a dated, distinct name", c.Subject.CommonName)
			}
			if got := c.NotAfter.Sub(pkitest.Now); got != 3650*24*time.Hour {
				t.Errorf("validity = %v, want 3650 days", got)
			}
			if !pki.KeyMatches(c, root.Key) {
				t.Error("key does not match")
			}
			if critical := basicConstraintsCritical(c); !critical {
				t.Error("basicConstraints is not critical")
			}
		})
	}
}

func TestEveryGenerationGetsADistinctName(t *testing.T) {
	a, b := pkitest.Root(t, pki.ECDSAP256), pkitest.Root(t, pki.ECDSAP256)
	if a.Cert.Subject.CommonName == b.Cert.Subject.CommonName {
		t.Errorf("two roots share the name %q", a.Cert.Subject.CommonName)
	}
}

func TestNewIntermediateFollowsTheMakefileProfile(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "east", KeyType: pki.ECDSAP256, Now: pkitest.Now, IstioNamespace: "mesh", TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	c := inter.Cert
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("want CA:TRUE pathlen:0, got IsCA=%v MaxPathLen=%d", c.IsCA, c.MaxPathLen)
	}
	if diff := cmp.Diff([]string{"DNS:istiod.mesh.svc", "URI:spiffe://example.org/ns/mesh/sa/istiod"}, pki.SANs(c)); diff != "" {
		t.Errorf("SANs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"east"}, c.Subject.Locality); diff != "" {
		t.Errorf("L (-want +got):\n%s", diff)
	}
	if !bytes.Equal(c.AuthorityKeyId, root.Cert.SubjectKeyId) {
		t.Error("AKI does not name the root's SKI")
	}
	if err := c.CheckSignatureFrom(root.Cert); err != nil {
		t.Errorf("not signed by the root: %v", err)
	}
	if pki.RoleOf(c) != pki.RoleIntermediate {
		t.Errorf("role = %s", pki.RoleOf(c))
	}
}

func TestNewIntermediateNeverOutlivesItsRoot(t *testing.T) {
	root, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256, Days: 100, Now: pkitest.Now})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "c", KeyType: pki.ECDSAP256, Days: 1000, Now: pkitest.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !inter.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("intermediate expires %v, root %v: want clamped to the root", inter.Cert.NotAfter, root.Cert.NotAfter)
	}
	if _, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "c", KeyType: pki.ECDSAP256, Now: pkitest.Now.AddDate(1, 0, 0)}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("issuing under an expired root: error = %v, want expired", err)
	}
}

func TestRoleIsJudgedFromTheCertificate(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	inter := pkitest.Intermediate(t, root, pki.ECDSAP256, "c")
	leaf := pkitest.Leaf(t, inter, "spiffe://cluster.local/ns/a/sa/b", pkitest.Now, time.Hour)
	tests := map[string]struct {
		cert *x509.Certificate
		want pki.Role
	}{
		"a self-signed CA is a root":                {root.Cert, pki.RoleRoot},
		"a CA signed by another is an intermediate": {inter.Cert, pki.RoleIntermediate},
		"a non-CA is a leaf":                        {leaf.Cert, pki.RoleLeaf},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := pki.RoleOf(tc.cert); got != tc.want {
				t.Errorf("RoleOf = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestSerialIsPrintedAsIstioctlDoes(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	root.Cert.SerialNumber.SetInt64(0x0a1b)
	if got := pki.Serial(root.Cert); got != "a1b" {
		t.Errorf("Serial = %q, want lowercase hex without leading zeros", got)
	}
}

func TestInspectMatchesKeysWithoutRevealingThem(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	other := pkitest.Root(t, pki.ECDSAP256)
	key, _ := pki.EncodeKey(root.Key)
	otherKey, _ := pki.EncodeKey(other.Key)
	items := pki.Inspect([]pki.Input{{Name: "cert.pem", Data: pki.EncodeCert(root.Cert)}, {Name: "key.pem", Data: key}, {Name: "lonely.pem", Data: otherKey}}, pkitest.Now)
	if len(items) != 3 {
		t.Fatalf("got %d items, want 3", len(items))
	}
	if got := items[1].Key.Matches; got != pki.Fingerprint(root.Cert) {
		t.Errorf("key matches %q, want the root's fingerprint", got)
	}
	if got := items[2].Key.Matches; got != "" {
		t.Errorf("an unrelated key matches %q, want none", got)
	}
}

func TestWriteFilesRefusesToOverwriteKeys(t *testing.T) {
	dir := t.TempDir()
	files := []pki.File{{Path: filepath.Join(dir, "c.pem"), Data: []byte("cert")}, {Path: filepath.Join(dir, "k.pem"), Data: []byte("key"), Secret: true}}
	if err := pki.WriteFiles(files, false); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "k.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %v, want 0600", st.Mode().Perm())
	}
	files[0].Data, files[1].Data = []byte("cert2"), []byte("key2")
	if err := pki.WriteFiles(files, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("error = %v, want a refusal naming --force", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "c.pem")); string(got) != "cert" {
		t.Errorf("c.pem = %q: a refused write changed a file", got)
	}
	if err := pki.WriteFiles(files, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "k.pem")); string(got) != "key2" {
		t.Errorf("k.pem = %q after --force", got)
	}
}

func basicConstraintsCritical(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal([]int{2, 5, 29, 19}) {
			return e.Critical
		}
	}
	return false
}

func TestDefaultKeyTypeIsRSA4096(t *testing.T) {
	root, err := pki.NewRoot(pki.RootOptions{Now: pkitest.Now})
	if err != nil {
		t.Fatal(err)
	}
	if got := pki.KeyDescription(root.Cert.PublicKey); got != "RSA 4096" {
		t.Errorf("default key = %s, want RSA 4096 (the Makefile's)", got)
	}
	if root.Cert.SignatureAlgorithm != x509.SHA256WithRSA {
		t.Errorf("signature = %v, want SHA256-RSA", root.Cert.SignatureAlgorithm)
	}
}
