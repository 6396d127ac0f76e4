package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"
)

// CA is a certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Profile defaults, from Istio's tools/certs Makefile (istio-ca-facts.md §6).
const (
	DefaultOrg              = "Istio"
	DefaultRootDays         = 3650
	DefaultIntermediateDays = 730
	DefaultIstioNamespace   = "istio-system"
	// backdate tolerates clock skew between this machine and the mesh.
	backdate = 5 * time.Minute
)

// caKeyUsage is the Makefile's keyUsage: digitalSignature, nonRepudiation,
// keyEncipherment, keyCertSign.
const caKeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment |
	x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign

// RootOptions configures NewRoot. Zero values take the Makefile defaults.
type RootOptions struct {
	KeyType      KeyType
	CommonName   string // default: "Root CA <date> <key id>", distinct per generation
	Organization string
	Days         int
	// Lifetime, when set, replaces Days: the root expires Lifetime after
	// Now (short-lived CAs for expiry drills such as the sandbox's
	// --ca expiring).
	Lifetime time.Duration
	Now      time.Time
}

// IntermediateOptions configures NewIntermediate.
type IntermediateOptions struct {
	Cluster      string // required; becomes L=<cluster>
	KeyType      KeyType
	CommonName   string // default: "Intermediate CA <cluster> <date> <key id>"
	Organization string
	Days         int // clamped so the intermediate never outlives its root
	// Lifetime, when set, replaces Days (still clamped to the root).
	Lifetime       time.Duration
	IstioNamespace string
	// TrustDomain, when set, adds the URI SAN spiffe://<td>/ns/<ns>/sa/istiod
	// naming the istiod that holds this signing CA.
	TrustDomain string
	Now         time.Time
}

// NewRoot generates a self-signed root CA with the tools/certs profile:
// critical CA:TRUE without path length, the Makefile's key usage, SKI.
func NewRoot(opts RootOptions) (*CA, error) {
	if err := defaults(&opts.KeyType, &opts.Organization, &opts.Days, DefaultRootDays, &opts.Now); err != nil {
		return nil, err
	}
	key, err := GenerateKey(opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	cn := opts.CommonName
	if cn == "" {
		cn = fmt.Sprintf("Root CA %s %s", opts.Now.UTC().Format("2006-01-02"), keyID(key.Public()))
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{opts.Organization}, CommonName: cn},
		NotBefore:             opts.Now.Add(-backdate),
		NotAfter:              opts.Now.Add(lifetime(opts.Days, opts.Lifetime)),
		KeyUsage:              caKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
	}
	return sign(tmpl, nil, key)
}

// NewIntermediate generates a per-cluster signing CA under root with the
// tools/certs profile: critical CA:TRUE, pathlen 0, SAN
// DNS:istiod.<namespace>.svc, L=<cluster>, SKI and AKI.
func NewIntermediate(root *CA, opts IntermediateOptions) (*CA, error) {
	if opts.Cluster == "" {
		return nil, fmt.Errorf("intermediate: a cluster name is required")
	}
	if err := defaults(&opts.KeyType, &opts.Organization, &opts.Days, DefaultIntermediateDays, &opts.Now); err != nil {
		return nil, err
	}
	if opts.IstioNamespace == "" {
		opts.IstioNamespace = DefaultIstioNamespace
	}
	if !root.Cert.IsCA {
		return nil, fmt.Errorf("intermediate: issuer %q is not a CA", root.Cert.Subject.CommonName)
	}
	if err := CheckRootForIntermediates(root.Cert); err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	if opts.Now.After(root.Cert.NotAfter) {
		return nil, fmt.Errorf("intermediate: root %q expired on %s", root.Cert.Subject.CommonName, root.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := GenerateKey(opts.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate intermediate key: %w", err)
	}
	cn := opts.CommonName
	if cn == "" {
		cn = fmt.Sprintf("Intermediate CA %s %s %s", opts.Cluster, opts.Now.UTC().Format("2006-01-02"), keyID(key.Public()))
	}
	notAfter := opts.Now.Add(lifetime(opts.Days, opts.Lifetime))
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	notBefore := opts.Now.Add(-backdate)
	if notBefore.Before(root.Cert.NotBefore) {
		notBefore = root.Cert.NotBefore
	}
	tmpl := &x509.Certificate{
		Subject: pkix.Name{
			Organization: []string{opts.Organization},
			CommonName:   cn,
			Locality:     []string{opts.Cluster},
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              caKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		DNSNames:              []string{"istiod." + opts.IstioNamespace + ".svc"},
	}
	if opts.TrustDomain != "" {
		u, err := spiffeURI(opts.TrustDomain, opts.IstioNamespace, "istiod")
		if err != nil {
			return nil, err
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	return sign(tmpl, root, key)
}

func defaults(kt *KeyType, org *string, d *int, defDays int, now *time.Time) error {
	if *kt == "" {
		*kt = RSA4096
	}
	if *org == "" {
		*org = DefaultOrg
	}
	if *d == 0 {
		*d = defDays
	}
	if *d < 0 {
		return fmt.Errorf("--days must be positive, got %d", *d)
	}
	if now.IsZero() {
		*now = time.Now()
	}
	return nil
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

// lifetime is l when set, else n days.
func lifetime(n int, l time.Duration) time.Duration {
	if l > 0 {
		return l
	}
	return days(n)
}

// sign issues tmpl with parent (nil: self-signed) and wraps the result.
func sign(tmpl *x509.Certificate, parent *CA, key crypto.Signer) (*CA, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1)) // never zero
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("sign %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// keyID is a short identifier of a public key (first 6 hex digits of the
// SHA-256 of its DER), used to make default names distinct per generation.
func keyID(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "000000"
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:3])
}
