package ca_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

type result struct {
	out, err string
	code     int
}

func run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runAt(t, time.Now(), stdin, args...)
}

func runAt(t *testing.T, now time.Time, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut},
		Now:     func() time.Time { return now },
	}
	code := app.Run(context.Background(), args, env)
	return result{out.String(), errOut.String(), code}
}

// workspace makes a root, a cluster bundle under it, and a second (new) root
// and bundle, with the CLI itself.
func workspace(t *testing.T, keyType string) string {
	t.Helper()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"ca", "root", "--out", filepath.Join(dir, "old-root"), "--key-type", keyType},
		{"ca", "intermediate", "--root", filepath.Join(dir, "old-root"), "--cluster", "east", "--out", filepath.Join(dir, "old"), "--key-type", keyType},
		{"ca", "root", "--out", filepath.Join(dir, "new-root"), "--key-type", keyType},
		{"ca", "intermediate", "--root", filepath.Join(dir, "new-root"), "--cluster", "east", "--out", filepath.Join(dir, "new"), "--key-type", keyType},
	} {
		if r := run(t, "", args...); r.code != 0 {
			t.Fatalf("meshca %v: exit %d\n%s", args, r.code, r.err)
		}
	}
	return dir
}

func TestCLIRotatesThroughAllPhases(t *testing.T) {
	for _, kt := range []string{"rsa-2048", "ecdsa-p256"} {
		t.Run(kt, func(t *testing.T) {
			dir := workspace(t, kt)
			cur := filepath.Join(dir, "old", "east")
			if r := run(t, "", "ca", "verify", cur); r.code != 0 || !strings.Contains(r.out, "istiod would load this bundle") {
				t.Fatalf("verify %s: exit %d\n%s%s", cur, r.code, r.out, r.err)
			}
			for _, phase := range []string{"trust", "issue", "retire"} {
				out := filepath.Join(dir, phase)
				r := run(t, "", "ca", "bundle", "--phase", phase, "--current", cur, "--new", filepath.Join(dir, "new", "east"), "--out", out)
				if r.code != 0 {
					t.Fatalf("bundle %s: exit %d\n%s", phase, r.code, r.err)
				}
				if r := run(t, "", "ca", "verify", out, "-o", "json"); r.code != 0 {
					t.Fatalf("verify %s: exit %d\n%s", phase, r.code, r.out)
				}
				st, err := os.Stat(filepath.Join(out, bundle.CAKeyFile))
				if err != nil || st.Mode().Perm() != 0o600 {
					t.Errorf("%s ca-key.pem: %v mode %v, want 0600", phase, err, st.Mode().Perm())
				}
				cur = out
			}
		})
	}
}

func TestKeysAreNeverPrinted(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	key, err := os.ReadFile(filepath.Join(dir, "old", "east", bundle.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Split(string(key), "\n")[1] // first base64 line of the key
	for _, format := range []string{"table", "wide", "json", "yaml"} {
		r := run(t, "", "ca", "inspect", filepath.Join(dir, "old", "east"), filepath.Join(dir, "old-root"), "-o", format)
		if r.code != 0 {
			t.Fatalf("inspect -o %s: exit %d: %s", format, r.code, r.err)
		}
		if strings.Contains(r.out+r.err, body) || strings.Contains(r.out, "PRIVATE KEY-----") {
			t.Errorf("inspect -o %s printed key material", format)
		}
		if format == "table" && !strings.Contains(r.out, "private key (matches cert CN=Intermediate CA east") {
			t.Errorf("inspect did not pair ca-key.pem with ca-cert.pem:\n%s", r.out)
		}
	}
}

func TestInspectJSONSchema(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	r := run(t, "", "ca", "inspect", filepath.Join(dir, "old", "east", bundle.CertChainFile), "-o", "json")
	var got struct {
		Items []struct {
			File        string `json:"file"`
			Kind        string `json:"kind"`
			Certificate struct {
				Role   string `json:"role"`
				SHA256 string `json:"sha256"`
				IsCA   bool   `json:"isCA"`
			} `json:"certificate"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(r.out), &got); err != nil {
		t.Fatalf("inspect -o json: %v\n%s", err, r.out)
	}
	if len(got.Items) != 2 || got.Items[0].Certificate.Role != "intermediate" || got.Items[1].Certificate.Role != "root" {
		t.Errorf("roles by content: %+v", got.Items)
	}
}

func TestInspectReadsStdin(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	r := run(t, string(pki.EncodeCert(root.Cert)), "ca", "inspect", "-")
	if r.code != 0 || !strings.Contains(r.out, "stdin") || !strings.Contains(r.out, "root") {
		t.Fatalf("exit %d\n%s%s", r.code, r.out, r.err)
	}
}

// TestBadInputIsRefusedAndNothingIsWritten covers the bad-input list of the
// offline toolkit: each case gets a clear error naming the file and the
// problem, and the output directory stays untouched.
func TestBadInputIsRefusedAndNothingIsWritten(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	good := filepath.Join(dir, "old", "east")
	newDir := filepath.Join(dir, "new", "east")
	mutate := func(name string, edit func(d string)) string {
		d := filepath.Join(t.TempDir(), name)
		copyDir(t, good, d)
		edit(d)
		return d
	}
	writeFile := func(d, f, data string) {
		if err := os.WriteFile(filepath.Join(d, f), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	read := func(d, f string) string {
		b, err := os.ReadFile(filepath.Join(d, f))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	otherKey := read(newDir, bundle.CAKeyFile)
	junk := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 50<<20/4), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := map[string]struct {
		current string
		wantErr string
	}{
		"malformed PEM": {mutate("malformed", func(d string) {
			writeFile(d, bundle.RootCertFile, "-----BEGIN CERTIFICATE-----\nMIIB\n")
		}), "root-cert.pem: no PEM block found"},
		"truncated PEM": {mutate("truncated", func(d string) {
			s := read(d, bundle.CACertFile)
			writeFile(d, bundle.CACertFile, s[:len(s)-40])
		}), "ca-cert.pem: no PEM block found"},
		"a key where a certificate is expected": {mutate("keyascert", func(d string) {
			writeFile(d, bundle.CertChainFile, read(d, bundle.CAKeyFile))
		}), `cert-chain.pem: PEM block 1 is "PRIVATE KEY", expected CERTIFICATE`},
		"base64 garbage": {mutate("garbage", func(d string) {
			writeFile(d, bundle.RootCertFile, "-----BEGIN CERTIFICATE-----\n@@@@####\n-----END CERTIFICATE-----\n")
		}), "root-cert.pem: no PEM block found"},
		"a key that does not match": {mutate("mismatch", func(d string) {
			writeFile(d, bundle.CAKeyFile, otherKey)
		}), "ca-key.pem: private key does not match"},
		"an intermediate that does not chain to the root": {mutate("wrongroot", func(d string) {
			writeFile(d, bundle.RootCertFile, read(newDir, bundle.RootCertFile))
		}), "ca-cert.pem: does not chain to a root"},
		"an empty file": {mutate("empty", func(d string) {
			writeFile(d, bundle.CertChainFile, "")
		}), "cert-chain.pem: empty file"},
		"a missing file": {mutate("missing", func(d string) {
			_ = os.Remove(filepath.Join(d, bundle.CAKeyFile))
		}), "missing ca-key.pem"},
		"a 50 MB file of junk": {mutate("junk", func(d string) {
			if err := os.Rename(junk, filepath.Join(d, bundle.RootCertFile)); err != nil {
				t.Fatal(err)
			}
		}), "root-cert.pem: larger than 1 MiB"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			r := run(t, "", "ca", "bundle", "--phase", "trust", "--current", tc.current, "--new", newDir, "--out", out)
			if r.code != 1 || !strings.Contains(r.err, tc.wantErr) || !strings.Contains(r.err, tc.current) {
				t.Errorf("bundle: exit %d, stderr %q; want exit 1 naming %s and %q", r.code, r.err, tc.current, tc.wantErr)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("bundle wrote %s despite the error", out)
			}
			r = run(t, "", "ca", "verify", tc.current)
			if r.code != 1 || !strings.Contains(r.out, tc.wantErr) {
				t.Errorf("verify: exit %d, stdout %q; want exit 1 and %q", r.code, r.out, tc.wantErr)
			}
		})
	}
}

func TestCAValidityIsCheckedAgainstTheClock(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	dir := pkitest.WriteBundle(t, pkitest.Bundle(t, root, pkitest.Intermediate(t, root, pki.ECDSAP256, "east")))
	tests := map[string]struct {
		now      time.Time
		wantCode int
		want     string
	}{
		"a valid CA passes":               {pkitest.Now, 0, "istiod would load this bundle"},
		"an expired CA is refused":        {pkitest.Now.AddDate(20, 0, 0), 1, "expired on"},
		"a not yet valid CA is refused":   {pkitest.Now.AddDate(0, -1, 0), 1, "is not valid before"},
		"a CA near expiry gets a warning": {pkitest.Now.AddDate(1, 11, 0), 0, "days left"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := runAt(t, tc.now, "", "ca", "verify", dir)
			if r.code != tc.wantCode || !strings.Contains(r.out, tc.want) {
				t.Errorf("exit %d, stdout %q; want exit %d and %q", r.code, r.out, tc.wantCode, tc.want)
			}
		})
	}
	// A not-yet-valid root cannot sign an intermediate.
	future, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256, Now: pkitest.Now.AddDate(5, 0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	rootDir := t.TempDir()
	if err := bundle.WriteRoot(rootDir, future, false); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	r := run(t, "", "ca", "intermediate", "--root", rootDir, "--cluster", "east", "--out", out)
	if r.code != 1 || !strings.Contains(r.err, "is not valid before") {
		t.Errorf("exit %d, stderr %q; want a not-yet-valid refusal", r.code, r.err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("output written despite the error")
	}
}

func TestIntermediateRefusesADuplicatedRootFile(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	rootDir := filepath.Join(dir, "old-root")
	cert, _ := os.ReadFile(filepath.Join(rootDir, bundle.RootCertFile))
	if err := os.WriteFile(filepath.Join(rootDir, bundle.RootCertFile), append(cert, cert...), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	r := run(t, "", "ca", "intermediate", "--root", rootDir, "--cluster", "west", "--out", out)
	if r.code != 1 || !strings.Contains(r.err, "root-cert.pem holds 2 certificates") {
		t.Errorf("exit %d, stderr %q", r.code, r.err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("output written despite the error")
	}
}

func TestNonCAIntermediateIsRefused(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	leaf := pkitest.Leaf(t, root, "spiffe://cluster.local/ns/x/sa/y", pkitest.Now, 24*365*time.Hour)
	key, _ := pki.EncodeKey(leaf.Key)
	b := &bundle.Bundle{CACert: pki.EncodeCert(leaf.Cert), CAKey: key, CertChain: pki.EncodeCerts(leaf.Cert, root.Cert), RootCert: pki.EncodeCert(root.Cert)}
	dir := pkitest.WriteBundle(t, b)
	r := run(t, "", "ca", "verify", dir)
	if r.code != 1 || !strings.Contains(r.out, "is not a CA") {
		t.Errorf("exit %d, stdout %q", r.code, r.out)
	}
}

func TestOutputDirectoryHoldingKeysIsRefused(t *testing.T) {
	dir := workspace(t, "ecdsa-p256")
	rootKey := filepath.Join(dir, "old-root", bundle.RootKeyFile)
	before, _ := os.ReadFile(rootKey)
	r := run(t, "", "ca", "root", "--out", filepath.Join(dir, "old-root"), "--key-type", "ecdsa-p256")
	if r.code != 1 || !strings.Contains(r.err, "refusing to overwrite a private key") {
		t.Errorf("root over an existing key: exit %d, %q", r.code, r.err)
	}
	if after, _ := os.ReadFile(rootKey); !bytes.Equal(before, after) {
		t.Error("root-key.pem changed")
	}
	r = run(t, "", "ca", "intermediate", "--root", filepath.Join(dir, "old-root"), "--cluster", "east", "--out", filepath.Join(dir, "old"))
	if r.code != 1 || !strings.Contains(r.err, "--force") {
		t.Errorf("intermediate over an existing key: exit %d, %q", r.code, r.err)
	}
	r = run(t, "", "ca", "bundle", "--phase", "trust", "--current", filepath.Join(dir, "old", "east"), "--new", filepath.Join(dir, "new", "east"), "--out", filepath.Join(dir, "new", "east"))
	if r.code != 1 || !strings.Contains(r.err, "--force") {
		t.Errorf("bundle over an existing key: exit %d, %q", r.code, r.err)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for name, args := range map[string][]string{
		"an unknown key type":  {"ca", "root", "--out", t.TempDir(), "--key-type", "dsa"},
		"an unknown phase":     {"ca", "bundle", "--phase", "later", "--current", "a", "--new", "b", "--out", "c"},
		"a missing argument":   {"ca", "verify"},
		"an unknown flag":      {"ca", "root", "--bogus"},
		"a missing --out":      {"ca", "root"},
		"an unknown output":    {"ca", "inspect", "-o", "xml", "x"},
		"a cluster with slash": {"ca", "intermediate", "--root", "r", "--cluster", "a/b", "--out", "o"},
	} {
		t.Run(name, func(t *testing.T) {
			if r := run(t, "", args...); r.code != 2 {
				t.Errorf("exit %d, want 2\n%s", r.code, r.err)
			}
		})
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
