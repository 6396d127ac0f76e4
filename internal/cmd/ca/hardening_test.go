package ca_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

// pathlenZeroRoot is a root CA with pathlen:0: valid by itself, but no
// intermediate under it can issue a leaf that verifies.
func pathlenZeroRoot(t *testing.T) *pki.CA {
	return pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
		c.MaxPathLen, c.MaxPathLenZero = 0, true
	})
}

// TestPathlenZeroRootIsRefusedOfflineBeforeAnyWrite: ca intermediate, ca
// verify and ca bundle all refuse a root with pathlen:0, naming it and the
// fix, and write nothing.
func TestPathlenZeroRootIsRefusedOfflineBeforeAnyWrite(t *testing.T) {
	root := pathlenZeroRoot(t)
	rootDir := pkitest.WriteRoot(t, root)
	out := filepath.Join(t.TempDir(), "out")
	r := runAt(t, pkitest.Now, "", "ca", "intermediate", "--root", rootDir, "--cluster", "east", "--out", out)
	if r.code != 1 || !strings.Contains(r.err, "has pathlen:0") || !strings.Contains(r.err, "fix: use a root without a path length constraint") {
		t.Errorf("ca intermediate: exit %d, stderr %q; want exit 1 with the pathlen refusal and its fix", r.code, r.err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("ca intermediate wrote %s", out)
	}

	// A bundle under that root, made outside meshca.
	inter := pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	badDir := pkitest.WriteBundle(t, pkitest.Bundle(t, root, inter))
	r = runAt(t, pkitest.Now, "", "ca", "verify", badDir)
	if r.code != 1 || !strings.Contains(r.out, "has pathlen:0 but leaves signed by") || !strings.Contains(r.out, "fix:") {
		t.Errorf("ca verify: exit %d, stdout %q; want exit 1 with the pathlen finding and a fix", r.code, r.out)
	}
	r = runAt(t, pkitest.Now, "", "ca", "verify", "--current", badDir)
	if r.code != 1 {
		t.Errorf("ca verify --current: exit %d; a pathlen that forbids leaves is unusable, not merely weak", r.code)
	}

	good := pkitest.Root(t, pki.ECDSAP256)
	curDir := pkitest.WriteBundle(t, pkitest.Bundle(t, good, pkitest.Intermediate(t, good, pki.ECDSAP256, "east")))
	for _, phase := range []string{"trust", "issue"} {
		r = runAt(t, pkitest.Now, "", "ca", "bundle", "--phase", phase, "--current", curDir, "--new", badDir, "--out", out)
		if r.code != 1 || !strings.Contains(r.err, "pathlen:0") {
			t.Errorf("ca bundle --phase %s: exit %d, stderr %q; want the pathlen refusal", phase, r.code, r.err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("ca bundle --phase %s wrote %s", phase, out)
		}
	}
}

func TestDSARootIsNamedAsDSA(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	r := run(t, "", "ca", "intermediate", "--root", pkitest.DSARootDir(t), "--cluster", "east", "--out", out)
	if r.code != 1 || !strings.Contains(r.err, "has a DSA key") || strings.Contains(r.err, "not a self-signed CA") {
		t.Errorf("exit %d, stderr %q; want exit 1 naming DSA, not \"not a self-signed CA\"", r.code, r.err)
	}
}

// TestWeakCAMaterialIsNotAcceptedSilently: RSA-1024 and an intermediate
// that outlives its root are errors for a new CA, warnings with --current.
func TestWeakCAMaterialIsNotAcceptedSilently(t *testing.T) {
	strong := pkitest.Root(t, pki.ECDSAP256)
	weakRoot := pkitest.CA(t, nil, pkitest.RSAKey(t, 1024), nil)
	tests := map[string]struct {
		dir  string
		want string
	}{
		"an RSA-1024 root": {pkitest.WriteBundle(t, pkitest.Bundle(t, weakRoot, pkitest.Intermediate(t, weakRoot, pki.ECDSAP256, "east"))), "has an RSA 1024 key"},
		"an intermediate outliving its root": {pkitest.WriteBundle(t, pkitest.Bundle(t, strong, pkitest.CA(t, strong, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
			c.NotAfter = strong.Cert.NotAfter.Add(24 * time.Hour)
		}))), "after \"Root CA"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := runAt(t, pkitest.Now, "", "ca", "verify", tc.dir)
			if r.code != 1 || !strings.Contains(r.out, tc.want) || !strings.Contains(r.out, "fix:") {
				t.Errorf("verify: exit %d\n%s\nwant exit 1 with %q and a fix", r.code, r.out, tc.want)
			}
			r = runAt(t, pkitest.Now, "", "ca", "verify", "--current", tc.dir)
			if r.code != 0 || !strings.Contains(r.out, "‼") || !strings.Contains(r.out, tc.want) {
				t.Errorf("verify --current: exit %d\n%s\nwant exit 0 with a warning %q", r.code, r.out, tc.want)
			}
		})
	}
}

// TestSpecialFilesAreRefusedAtOnce: a FIFO where a PEM file is expected
// (nobody ever writes to it) is refused by name instead of blocking.
func TestSpecialFilesAreRefusedAtOnce(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	fifoBundle := filepath.Join(t.TempDir(), "east")
	copyDir(t, filepath.Join(dir, "old", "east"), fifoBundle)
	mkfifo := func(p string) {
		_ = os.Remove(p)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mkfifo(filepath.Join(fifoBundle, bundle.CAKeyFile))
	fifoRoot := filepath.Join(t.TempDir(), "root")
	copyDir(t, filepath.Join(dir, "old-root"), fifoRoot)
	mkfifo(filepath.Join(fifoRoot, bundle.RootCertFile))
	lone := filepath.Join(t.TempDir(), "cert.pem")
	mkfifo(lone)

	tests := map[string]struct {
		args   []string
		stream string
		want   string
	}{
		"ca verify":              {[]string{"ca", "verify", fifoBundle}, "out", "ca-key.pem is a named pipe (FIFO), not a regular file"},
		"ca inspect":             {[]string{"ca", "inspect", lone}, "out", "cert.pem is a named pipe (FIFO), not a regular file"},
		"ca intermediate --root": {[]string{"ca", "intermediate", "--root", fifoRoot, "--cluster", "east", "--out", t.TempDir()}, "err", "root-cert.pem is a named pipe (FIFO)"},
		"ca bundle --current":    {[]string{"ca", "bundle", "--phase", "trust", "--current", fifoBundle, "--new", filepath.Join(dir, "new", "east"), "--out", filepath.Join(t.TempDir(), "o")}, "err", "ca-key.pem is a named pipe (FIFO)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			done := make(chan result, 1)
			start := time.Now()
			go func() { done <- run(t, "", tc.args...) }()
			var r result
			select {
			case r = <-done:
			case <-time.After(30 * time.Second): // a hang guard, not a performance bound
				t.Fatalf("meshca %v still blocked on the FIFO after 30s", tc.args)
			}
			t.Logf("meshca %s returned in %v", name, time.Since(start))
			got := r.err
			if tc.stream == "out" {
				got = r.out
			}
			if r.code != 1 || !strings.Contains(got, tc.want) {
				t.Errorf("exit %d, std%s %q; want exit 1 and %q", r.code, tc.stream, got, tc.want)
			}
		})
	}
}

func TestDaysMustBePositive(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	for _, days := range []string{"0", "-5"} {
		for _, args := range [][]string{
			{"ca", "root", "--out", filepath.Join(t.TempDir(), "r"), "--days", days},
			{"ca", "intermediate", "--root", filepath.Join(dir, "old-root"), "--cluster", "west", "--out", t.TempDir(), "--days", days},
		} {
			r := run(t, "", args...)
			if r.code != 2 || !strings.Contains(r.err, "--days "+days+": the validity must be at least 1 day") {
				t.Errorf("meshca %v: exit %d, stderr %q; want exit 2 naming --days", args, r.code, r.err)
			}
		}
	}
}

// TestUnreadableBundleIsNotBlamedOnIstiod: a file that cannot be read is
// reported as unread, not as "istiod would refuse this bundle".
func TestUnreadableBundleIsNotBlamedOnIstiod(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	b := filepath.Join(t.TempDir(), "east")
	copyDir(t, filepath.Join(dir, "old", "east"), b)
	_ = os.Remove(filepath.Join(b, bundle.CAKeyFile))
	if err := os.Mkdir(filepath.Join(b, bundle.CAKeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", "ca", "verify", b)
	if r.code != 1 || !strings.Contains(r.out, "could not be read, so it was not checked") || strings.Contains(r.out, "istiod would") {
		t.Errorf("exit %d\n%s", r.code, r.out)
	}
}

// TestInspectListsEverythingAndFlagsWhatIsBroken: a looping symlink, a DSA
// key and a certificate with a broken signature are each named, and the
// other files are still listed.
func TestInspectListsEverythingAndFlagsWhatIsBroken(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	in := filepath.Join(t.TempDir(), "in")
	copyDir(t, filepath.Join(dir, "old", "east"), in)
	if err := os.Symlink("loop.pem", filepath.Join(in, "loop.pem")); err != nil {
		t.Fatal(err)
	}
	dsaKey, err := os.ReadFile(filepath.Join(pkitest.DSARootDir(t), bundle.RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(in, "dsa-key.pem"), dsaKey, 0o600); err != nil {
		t.Fatal(err)
	}
	root := pkitest.Root(t, pki.ECDSAP256)
	der := append([]byte(nil), root.Cert.Raw...)
	der[len(der)-3] ^= 0xff // inside the signature
	if err := os.WriteFile(filepath.Join(in, "broken.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", "ca", "inspect", in)
	for _, want := range []string{
		"symbolic link " + filepath.Join(in, "loop.pem") + " cannot be followed",
		"is a DSA private key",
		"BROKEN SIGNATURE: self-signature does not verify",
		"ca-cert.pem", "cert-chain.pem", "root-cert.pem",
		"private key (matches cert",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, r.out)
		}
	}
	if r.code != 1 {
		t.Errorf("exit %d, want 1 when something could not be read or is broken", r.code)
	}
}
