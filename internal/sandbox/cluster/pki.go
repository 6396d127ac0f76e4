package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names under Dir/pki.
const (
	caName               = "ca"
	apiserverName        = "apiserver"
	adminName            = "admin"
	kubeletClientName    = "apiserver-kubelet-client"
	kwokKubeletName      = "kwok-kubelet"
	kwokClientName       = "kwok"
	controllerMgrName    = "controller-manager"
	schedulerName        = "scheduler"
	serviceAccountKey    = "sa.key"
	serviceAccountPubKey = "sa.pub"

	certValidity = 365 * 24 * time.Hour
	// renewBefore is how long a reused certificate must still be valid.
	renewBefore = 24 * time.Hour
)

// serviceClusterIPRange is the apiserver's service range; its first address
// is the kubernetes.default service and must be in the serving certificate.
const (
	serviceClusterIPRange = "10.96.0.0/16"
	kubernetesServiceIP   = "10.96.0.1"
	podCIDR               = "10.244.0.0/16"
)

// leafSpec describes one certificate signed by the cluster CA.
type leafSpec struct {
	name  string // file base name under pki/
	cn    string
	orgs  []string
	usage []x509.ExtKeyUsage
	dns   []string
	ips   []net.IP
}

// pki is the loaded cluster CA plus the directory the files live in.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte
}

func (p *pki) certPath(name string) string { return filepath.Join(p.dir, name+".crt") }
func (p *pki) keyPath(name string) string  { return filepath.Join(p.dir, name+".key") }

var loopbackIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}

// leafSpecs lists every certificate the control plane needs.
func leafSpecs() []leafSpec {
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return []leafSpec{
		{
			name:  apiserverName,
			cn:    "kube-apiserver",
			usage: server,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"},
			ips: append([]net.IP{net.ParseIP(kubernetesServiceIP)}, loopbackIPs...),
		},
		{name: adminName, cn: "meshca-sandbox-admin", orgs: []string{"system:masters"}, usage: client},
		{name: kubeletClientName, cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, usage: client},
		{name: kwokKubeletName, cn: "kwok-kubelet", usage: server, dns: []string{"localhost"}, ips: loopbackIPs},
		{name: kwokClientName, cn: "kwok-controller", orgs: []string{"system:masters"}, usage: client},
		// The controller-manager and the scheduler use one certificate both
		// as their client identity (bootstrap RBAC knows these user names)
		// and to serve /healthz on 127.0.0.1.
		{name: controllerMgrName, cn: "system:kube-controller-manager", usage: both, dns: []string{"localhost"}, ips: loopbackIPs},
		{name: schedulerName, cn: "system:kube-scheduler", usage: both, dns: []string{"localhost"}, ips: loopbackIPs},
	}
}

// ensurePKI loads or creates the CA, every leaf certificate and the
// service-account key pair under dir. Existing material is reused as long as
// it is valid, so a restarted cluster keeps its identity and its tokens.
func ensurePKI(dir string, now time.Time) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki directory %s: %w", dir, err)
	}
	p := &pki{dir: dir}
	if err := p.loadOrCreateCA(now); err != nil {
		return nil, err
	}
	for _, spec := range leafSpecs() {
		if err := p.ensureLeaf(spec, now); err != nil {
			return nil, err
		}
	}
	if err := ensureServiceAccountKeys(dir); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) loadOrCreateCA(now time.Time) error {
	cert, key, err := loadPair(p.certPath(caName), p.keyPath(caName))
	if err == nil && now.Add(renewBefore).Before(cert.NotAfter) && cert.IsCA {
		p.caCert, p.caKey = cert, key
		p.caPEM = pemEncode("CERTIFICATE", cert.Raw)
		return nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load cluster CA from %s: %w", p.dir, err)
	}
	key, err = newKey()
	if err != nil {
		return fmt.Errorf("generate cluster CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{CommonName: "meshca-sandbox-ca", Organization: []string{"meshca sandbox"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create cluster CA certificate: %w", err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("parse cluster CA certificate: %w", err)
	}
	if err := writePair(p.certPath(caName), p.keyPath(caName), der, key); err != nil {
		return err
	}
	p.caCert, p.caKey, p.caPEM = cert, key, pemEncode("CERTIFICATE", der)
	// A new CA invalidates every leaf; remove them so they are re-issued.
	for _, spec := range leafSpecs() {
		_ = os.Remove(p.certPath(spec.name))
	}
	return nil
}

func (p *pki) ensureLeaf(spec leafSpec, now time.Time) error {
	if cert, _, err := loadPair(p.certPath(spec.name), p.keyPath(spec.name)); err == nil {
		roots := x509.NewCertPool()
		roots.AddCert(p.caCert)
		_, verr := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: spec.usage})
		if verr == nil && now.Add(renewBefore).Before(cert.NotAfter) {
			return nil
		}
	}
	key, err := newKey()
	if err != nil {
		return fmt.Errorf("generate key for certificate %s: %w", spec.name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(),
		Subject:      pkix.Name{CommonName: spec.cn, Organization: spec.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  spec.usage,
		DNSNames:     spec.dns,
		IPAddresses:  spec.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		return fmt.Errorf("sign certificate %s: %w", spec.name, err)
	}
	return writePair(p.certPath(spec.name), p.keyPath(spec.name), der, key)
}

// ensureServiceAccountKeys creates the key pair the apiserver signs and
// verifies service-account tokens with, unless it exists.
func ensureServiceAccountKeys(dir string) error {
	keyPath, pubPath := filepath.Join(dir, serviceAccountKey), filepath.Join(dir, serviceAccountPubKey)
	if _, err := os.Stat(keyPath); err == nil {
		if _, err := os.Stat(pubPath); err == nil {
			return nil
		}
	}
	key, err := newKey()
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("encode service-account public key: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeFileAtomic(pubPath, pemEncode("PUBLIC KEY", pub), 0o644)
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func mustSerial() *big.Int {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err)) // crypto/rand does not fail on Linux
	}
	return serial.Add(serial, big.NewInt(1))
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePair(certPath, keyPath string, der []byte, key crypto.Signer) error {
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeFileAtomic(certPath, pemEncode("CERTIFICATE", der), 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode private key %s: %w", path, err)
	}
	return writeFileAtomic(path, pemEncode("PRIVATE KEY", der), 0o600)
}

// loadPair reads a PEM certificate and its PKCS#8 key.
func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("certificate %s: no CERTIFICATE PEM block", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate %s: %w", certPath, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, fmt.Errorf("key %s: no PEM block", keyPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse key %s: %w", keyPath, err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("key %s: not a signing key", keyPath)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(signer.Public()) {
		return nil, nil, fmt.Errorf("key %s does not match certificate %s", keyPath, certPath)
	}
	return cert, signer, nil
}

// writeFileAtomic writes data to a temporary file in the same directory and
// renames it into place, so readers never see a partial file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
