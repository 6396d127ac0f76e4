package cluster

import (
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestPKIIsGeneratedPrivateAndReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	now := time.Now()
	p, err := ensurePKI(dir, now)
	if err != nil {
		t.Fatalf("ensurePKI: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.caCert)
	for _, spec := range leafSpecs() {
		cert, _, err := loadPair(p.certPath(spec.name), p.keyPath(spec.name))
		if err != nil {
			t.Fatalf("load %s: %v", spec.name, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: spec.usage}); err != nil {
			t.Errorf("%s does not verify against the cluster CA for %v: %v", spec.name, spec.usage, err)
		}
		if st, err := os.Stat(p.keyPath(spec.name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("key %s: mode %v, err %v; want 0600", spec.name, st.Mode().Perm(), err)
		}
	}
	for _, key := range []string{p.keyPath(caName), filepath.Join(dir, serviceAccountKey)} {
		if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("key %s: mode %v, err %v; want 0600", key, st.Mode().Perm(), err)
		}
	}

	apiserver, _, err := loadPair(p.certPath(apiserverName), p.keyPath(apiserverName))
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "localhost", "kubernetes.default.svc"} {
		if err := apiserver.VerifyHostname(host); err != nil {
			t.Errorf("apiserver certificate not valid for %s: %v", host, err)
		}
	}
	admin, _, err := loadPair(p.certPath(adminName), p.keyPath(adminName))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(admin.Subject.Organization, "system:masters") {
		t.Errorf("admin certificate organizations = %v, want system:masters", admin.Subject.Organization)
	}
	if !slices.ContainsFunc(apiserver.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.ParseIP(kubernetesServiceIP)) }) {
		t.Errorf("apiserver certificate lacks the kubernetes service IP %s", kubernetesServiceIP)
	}

	again, err := ensurePKI(dir, now.Add(time.Minute))
	if err != nil {
		t.Fatalf("ensurePKI again: %v", err)
	}
	if !again.caCert.Equal(p.caCert) {
		t.Error("second ensurePKI replaced a valid CA")
	}
	reloaded, _, err := loadPair(p.certPath(apiserverName), p.keyPath(apiserverName))
	if err != nil {
		t.Fatal(err)
	}
	if !reloaded.Equal(apiserver) {
		t.Error("second ensurePKI replaced a valid apiserver certificate")
	}
}

func TestPKIReissuesALeafWhoseKeyDoesNotMatch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := ensurePKI(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Swap in another leaf's key: the pair no longer matches.
	other, err := os.ReadFile(p.keyPath(schedulerName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.keyPath(adminName), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ensurePKI(dir, time.Now()); err != nil {
		t.Fatalf("ensurePKI: %v", err)
	}
	if _, _, err := loadPair(p.certPath(adminName), p.keyPath(adminName)); err != nil {
		t.Errorf("admin pair after re-issue: %v", err)
	}
}
