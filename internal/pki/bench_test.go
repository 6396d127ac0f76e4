package pki_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/pki"
)

// BenchmarkRootAndIntermediate measures generating a root and one cluster
// intermediate, per key type: the work of `meshca ca root` + `ca intermediate`.
func BenchmarkRootAndIntermediate(b *testing.B) {
	for _, kt := range pki.KeyTypes {
		b.Run(string(kt), func(b *testing.B) {
			for b.Loop() {
				root, err := pki.NewRoot(pki.RootOptions{KeyType: kt})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "c", KeyType: kt}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenSSLRootAndIntermediate does the same work with openssl as the
// tools/certs Makefile does it (RSA 4096 and ECDSA P-256), for a ratio
// measured in one run: compare with BenchmarkRootAndIntermediate.
func BenchmarkOpenSSLRootAndIntermediate(b *testing.B) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		b.Skip("openssl not installed")
	}
	for name, keyArgs := range map[string][]string{
		"rsa-4096":   {"-newkey", "rsa:4096"},
		"ecdsa-p256": {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"},
	} {
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			run := func(args ...string) {
				cmd := exec.Command(bin, args...)
				cmd.Dir = dir
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("openssl %v: %v\n%s", args, err, out)
				}
			}
			for b.Loop() {
				run(append([]string{"req", "-x509", "-nodes", "-sha256", "-days", "3650", "-subj", "/O=Istio/CN=Root CA",
					"-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,keyCertSign",
					"-keyout", "root-key.pem", "-out", "root-cert.pem"}, keyArgs...)...)
				run(append([]string{"req", "-new", "-nodes", "-sha256", "-subj", "/O=Istio/CN=Intermediate CA/L=c",
					"-keyout", "ca-key.pem", "-out", "ca.csr"}, keyArgs...)...)
				run("x509", "-req", "-sha256", "-days", "730", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
					"-in", "ca.csr", "-out", filepath.Join(dir, "ca-cert.pem"))
			}
		})
	}
}
