package bundle_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

func TestCheckAcceptsAMakefileLayoutBundleWithWarnings(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	b := pkitest.Bundle(t, root, pkitest.Intermediate(t, root, pki.ECDSAP256, "east"))
	rep := bundle.Check(b, bundle.CheckOptions{Now: pkitest.Now})
	if err := rep.Err(); err != nil {
		t.Fatalf("valid bundle refused: %v", err)
	}
	w := rep.Warnings()
	if len(w) != 1 || !strings.Contains(w[0].Message, "tools/certs layout") {
		t.Errorf("warnings = %v, want only the root-in-cert-chain note", w)
	}
}

func TestCheckRefusesWhatIstiodRefuses(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	inter := pkitest.Intermediate(t, root, pki.ECDSAP256, "east")
	otherRoot := pkitest.Root(t, pki.ECDSAP256)
	otherInter := pkitest.Intermediate(t, otherRoot, pki.ECDSAP256, "east")
	leaf := pkitest.Leaf(t, inter, "spiffe://cluster.local/ns/a/sa/b", pkitest.Now, 24*time.Hour)
	leafKey, _ := pki.EncodeKey(leaf.Key)
	otherKey, _ := pki.EncodeKey(otherInter.Key)
	base := pkitest.Bundle(t, root, inter)
	base.Source = "dir"

	tests := map[string]struct {
		edit    func(b *bundle.Bundle)
		now     time.Time
		wantErr string
	}{
		"a key that does not match the signing certificate": {
			edit:    func(b *bundle.Bundle) { b.CAKey = otherKey },
			wantErr: "dir/ca-key.pem: private key does not match",
		},
		"an intermediate that chains to another root": {
			edit: func(b *bundle.Bundle) {
				b.CACert, b.CertChain = pki.EncodeCert(otherInter.Cert), pki.EncodeCert(otherInter.Cert)
				b.CAKey = otherKey
			},
			wantErr: "dir/ca-cert.pem: does not chain to a root in dir/root-cert.pem",
		},
		"a signing certificate that is not a CA": {
			edit: func(b *bundle.Bundle) {
				b.CACert, b.CAKey = pki.EncodeCert(leaf.Cert), leafKey
				b.CertChain = pki.EncodeCerts(leaf.Cert, inter.Cert)
			},
			wantErr: "is not a CA",
		},
		"an expired CA":         {now: pkitest.Now.AddDate(20, 0, 0), wantErr: "expired on"},
		"a not yet valid CA":    {now: pkitest.Now.AddDate(-1, 0, 0), wantErr: "is not valid before"},
		"a malformed root file": {edit: func(b *bundle.Bundle) { b.RootCert = b.RootCert[:40] }, wantErr: "dir/root-cert.pem: no PEM block found"},
		"a key file holding a certificate": {
			edit:    func(b *bundle.Bundle) { b.CAKey = b.CACert },
			wantErr: `dir/ca-key.pem: PEM block 1 is "CERTIFICATE", expected a private key`,
		},
		"an empty cert-chain": {edit: func(b *bundle.Bundle) { b.CertChain = nil }, wantErr: "dir/cert-chain.pem: empty file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := base.Clone()
			if tc.edit != nil {
				tc.edit(b)
			}
			now := tc.now
			if now.IsZero() {
				now = pkitest.Now
			}
			err := bundle.Validate(b, now)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestCheckWarnsAboutDuplicatesAndNearExpiry(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	b := pkitest.Bundle(t, root, pkitest.Intermediate(t, root, pki.ECDSAP256, "east"))
	b.RootCert = append(b.RootCert, b.RootCert...)
	rep := bundle.Check(b, bundle.CheckOptions{Now: pkitest.Now, WarnWithin: 800 * 24 * time.Hour})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, w := range rep.Warnings() {
		msgs = append(msgs, w.Message)
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"1 duplicate root", "days left"} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings %q lack %q", all, want)
		}
	}
}

func TestLoadNamesMissingFiles(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	dir := pkitest.WriteBundle(t, pkitest.Bundle(t, root, pkitest.Intermediate(t, root, pki.ECDSAP256, "east")))
	if err := os.Remove(filepath.Join(dir, bundle.CertChainFile)); err != nil {
		t.Fatal(err)
	}
	_, err := bundle.Load(dir)
	if err == nil || !strings.Contains(err.Error(), "missing cert-chain.pem") || !strings.Contains(err.Error(), "incomplete signing CA bundle") {
		t.Fatalf("error = %v", err)
	}
	if _, err := bundle.Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "holds no cacerts bundle") {
		t.Fatalf("empty dir: error = %v", err)
	}
	if _, err := bundle.Load(filepath.Join(dir, "nope")); err == nil {
		t.Fatal("missing directory accepted")
	}
}

func TestLoadRootRefusesADuplicatedRoot(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	dir := t.TempDir()
	if err := bundle.WriteRoot(dir, root, false); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.LoadRoot(dir, pkitest.Now); err != nil {
		t.Fatal(err)
	}
	cert := pki.EncodeCert(root.Cert)
	if err := os.WriteFile(filepath.Join(dir, bundle.RootCertFile), append(cert, cert...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.LoadRoot(dir, pkitest.Now); err == nil || !strings.Contains(err.Error(), "holds 2 certificates") {
		t.Fatalf("error = %v, want a refusal of the duplicate", err)
	}
}

// TestPhasesChainAndSatisfyIstiodReloadRule runs current → trust → issue →
// retire for RSA and ECDSA and checks every bundle as istiod and openssl
// would, and every transition against istiod 1.28's byte-containment rule.
func TestPhasesChainAndSatisfyIstiodReloadRule(t *testing.T) {
	for _, kt := range []pki.KeyType{pki.RSA2048, pki.ECDSAP384} {
		t.Run(string(kt), func(t *testing.T) {
			oldRoot := pkitest.Root(t, kt)
			cur := pkitest.Bundle(t, oldRoot, pkitest.Intermediate(t, oldRoot, kt, "east"))
			newRoot := pkitest.Root(t, kt)
			next := pkitest.Bundle(t, newRoot, pkitest.Intermediate(t, newRoot, kt, "east"))

			trust := build(t, bundle.PhaseTrust, cur, next)
			if !bytes.HasPrefix(trust.RootCert, cur.RootCert) || !bytes.Equal(trust.CACert, cur.CACert) || !bytes.Equal(trust.CAKey, cur.CAKey) {
				t.Error("trust: must keep the signer and start with the exact current root bytes")
			}
			issue := build(t, bundle.PhaseIssue, trust, next)
			if !bytes.HasPrefix(issue.RootCert, trust.RootCert) || bytes.Equal(issue.RootCert, trust.RootCert) {
				t.Error("issue: root-cert.pem must be a strict byte superset of the trust bundle's")
			}
			if !bytes.Equal(issue.CACert, next.CACert) || !bytes.Equal(issue.CertChain, next.CertChain) {
				t.Error("issue: must sign with the new intermediate")
			}
			retire := build(t, bundle.PhaseRetire, issue, next)
			if !bytes.Equal(retire.RootCert, pki.EncodeCert(newRoot.Cert)) {
				t.Errorf("retire: root-cert.pem = %q, want the new root only", retire.RootCert)
			}
			for i, pair := range [][2]*bundle.Bundle{{cur, trust}, {trust, issue}, {issue, retire}} {
				if r, err := bundle.Transition(pair[0], pair[1], true); err != nil || r != bundle.ReloadRoots {
					t.Errorf("transition %d: reload %q, error %v; want a root hot-reload", i, r, err)
				}
				if !bytes.Contains(pair[1].RootCert, pair[0].RootCert) && !bytes.Contains(pair[0].RootCert, pair[1].RootCert) {
					t.Errorf("transition %d breaks the containment rule", i)
				}
			}
			for name, b := range map[string]*bundle.Bundle{"trust": trust, "issue": issue, "retire": retire} {
				opensslVerify(t, name, b)
			}
			// Re-running a phase that is in place changes nothing.
			for name, pair := range map[string][2]*bundle.Bundle{"trust": {trust, build(t, bundle.PhaseTrust, trust, next)}, "issue": {issue, build(t, bundle.PhaseIssue, issue, next)}, "retire": {retire, build(t, bundle.PhaseRetire, retire, next)}} {
				if !pair[0].Equal(pair[1]) {
					t.Errorf("re-running %s changed the bundle", name)
				}
			}
		})
	}
}

func TestPhasesRefuseToSkipAhead(t *testing.T) {
	oldRoot := pkitest.Root(t, pki.ECDSAP256)
	cur := pkitest.Bundle(t, oldRoot, pkitest.Intermediate(t, oldRoot, pki.ECDSAP256, "east"))
	newRoot := pkitest.Root(t, pki.ECDSAP256)
	next := pkitest.Bundle(t, newRoot, pkitest.Intermediate(t, newRoot, pki.ECDSAP256, "east"))
	tests := map[string]struct {
		phase   bundle.Phase
		cur     *bundle.Bundle
		wantErr string
	}{
		"issue before the new root is trusted": {bundle.PhaseIssue, cur, "build and roll out the trust phase first"},
		"retire before the new signer issues":  {bundle.PhaseRetire, build(t, bundle.PhaseTrust, cur, next), "complete the issue phase"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := bundle.Build(tc.phase, tc.cur, next, pkitest.Now)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestTransitionFollowsIstiod128(t *testing.T) {
	rootA, rootB := pkitest.Root(t, pki.ECDSAP256), pkitest.Root(t, pki.ECDSAP256)
	a := pkitest.Bundle(t, rootA, pkitest.Intermediate(t, rootA, pki.ECDSAP256, "c"))
	a2 := pkitest.Bundle(t, rootA, pkitest.Intermediate(t, rootA, pki.ECDSAP256, "c"))
	b := pkitest.Bundle(t, rootB, pkitest.Intermediate(t, rootB, pki.ECDSAP256, "c"))
	reordered := b.Clone()
	reordered.RootCert = append(bytes.Clone(b.RootCert), a.RootCert...) // new + old: old bytes at the end still contained
	swapped := b.Clone()
	swapped.RootCert = pki.EncodeCerts(rootB.Cert) // no containment
	reformatted := a.Clone()
	reformatted.RootCert = bytes.ReplaceAll(a.RootCert, []byte("\n"), []byte("\r\n")) // same cert, other bytes

	tests := map[string]struct {
		from, to  *bundle.Bundle
		multiRoot bool
		want      bundle.Reload
		wantErr   string
	}{
		"an identical bundle is no change":            {a, a, false, bundle.ReloadNone, ""},
		"a new intermediate under the same root":      {a, a2, false, bundle.ReloadSigner, ""},
		"appending roots needs ISTIO_MULTIROOT_MESH":  {a, reordered, false, "", "Multi root is disabled"},
		"old bytes anywhere in the new file are fine": {a, reordered, true, bundle.ReloadRoots, ""},
		"a swapped root is ignored by istiod":         {a, swapped, true, "", "Updating new ROOT-CA not supported"},
		"the same root re-encoded is ignored too":     {a, reformatted, true, "", "Updating new ROOT-CA not supported"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := bundle.Transition(tc.from, tc.to, tc.multiRoot)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Transition = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestMakefileBundleIsAcceptedAsCurrent generates a bundle with openssl
// exactly as Istio's tools/certs Makefile does and rotates away from it.
func TestMakefileBundleIsAcceptedAsCurrent(t *testing.T) {
	dir := makefileBundle(t)
	cur, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.Validate(cur, time.Now()); err != nil {
		t.Fatalf("Makefile bundle refused: %v", err)
	}
	newRoot := pkitest.Root(t, pki.ECDSAP256)
	next := pkitest.Bundle(t, newRoot, pkitest.Intermediate(t, newRoot, pki.ECDSAP256, "east"))
	now := time.Now()
	trust, err := bundle.Build(bundle.PhaseTrust, cur, next, now)
	if err != nil {
		t.Fatalf("trust from a Makefile bundle: %v", err)
	}
	if !bytes.HasPrefix(trust.RootCert, cur.RootCert) {
		t.Error("trust bundle does not start with the Makefile's exact root bytes")
	}
	issue, err := bundle.Build(bundle.PhaseIssue, trust, next, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Build(bundle.PhaseRetire, issue, next, now); err != nil {
		t.Fatal(err)
	}
}

func build(t *testing.T, phase bundle.Phase, cur, next *bundle.Bundle) *bundle.Bundle {
	t.Helper()
	out, err := bundle.Build(phase, cur, next, pkitest.Now)
	if err != nil {
		t.Fatalf("build %s: %v", phase, err)
	}
	return out
}

func openssl(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl not found; CI installs it (hack/deps.sh)")
		}
		t.Skip("openssl not installed")
	}
	return path
}

// opensslVerify checks b's signing certificate with `openssl verify` against
// its roots and chain, at the tests' clock.
func opensslVerify(t *testing.T, name string, b *bundle.Bundle) {
	t.Helper()
	bin := openssl(t)
	dir := t.TempDir()
	if err := b.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "verify", "-attime", "1793534400", // pkitest.Now
		"-CAfile", filepath.Join(dir, bundle.RootCertFile),
		"-untrusted", filepath.Join(dir, bundle.CertChainFile),
		filepath.Join(dir, bundle.CACertFile)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl verify %s: %v\n%s", name, err, out)
	}
}

// makefileBundle reproduces tools/certs: root-ca and <cluster>-cacerts.
func makefileBundle(t *testing.T) string {
	t.Helper()
	bin := openssl(t)
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const common = "[ req ]\nencrypt_key = no\nprompt = no\nutf8 = yes\ndefault_md = sha256\ndefault_bits = 4096\nreq_extensions = req_ext\nx509_extensions = req_ext\ndistinguished_name = req_dn\n"
	write("root-ca.conf", common+"[ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true\nkeyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n[ req_dn ]\nO = Istio\nCN = Root CA\n")
	run("genrsa", "-out", "root-key.pem", "4096")
	run("req", "-sha256", "-new", "-key", "root-key.pem", "-config", "root-ca.conf", "-out", "root-cert.csr")
	run("x509", "-req", "-sha256", "-days", "3650", "-signkey", "root-key.pem", "-extensions", "req_ext", "-extfile", "root-ca.conf", "-in", "root-cert.csr", "-out", "root-cert.pem")
	if err := os.Mkdir(filepath.Join(dir, "east"), 0o700); err != nil {
		t.Fatal(err)
	}
	write("east/intermediate.conf", common+"[ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true, pathlen:0\nkeyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\nsubjectAltName=@san\n[ san ]\nDNS.1 = istiod.istio-system.svc\n[ req_dn ]\nO = Istio\nCN = Intermediate CA\nL = east\n")
	run("genrsa", "-out", "east/ca-key.pem", "4096")
	run("req", "-sha256", "-new", "-config", "east/intermediate.conf", "-key", "east/ca-key.pem", "-out", "east/cluster-ca.csr")
	run("x509", "-req", "-sha256", "-days", "730", "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial", "-extensions", "req_ext", "-extfile", "east/intermediate.conf", "-in", "east/cluster-ca.csr", "-out", "east/ca-cert.pem")
	caCert, _ := os.ReadFile(filepath.Join(dir, "east/ca-cert.pem"))
	rootCert, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	write("east/cert-chain.pem", string(caCert)+string(rootCert))
	write("east/root-cert.pem", string(rootCert))
	for _, f := range []string{"intermediate.conf", "cluster-ca.csr"} {
		_ = os.Remove(filepath.Join(dir, "east", f))
	}
	return filepath.Join(dir, "east")
}
