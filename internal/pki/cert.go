package pki

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"math"
	"time"
)

// Role is what a certificate is, judged from its own content (self-signature
// and CA flag), never from its position in a file.
type Role string

// Certificate roles.
const (
	RoleRoot         Role = "root"
	RoleIntermediate Role = "intermediate"
	RoleLeaf         Role = "leaf"
)

// RoleOf classifies c: a self-signed CA is a root, any other CA an
// intermediate, anything else a leaf.
func RoleOf(c *x509.Certificate) Role {
	if !c.IsCA {
		return RoleLeaf
	}
	if IsSelfSigned(c) {
		return RoleRoot
	}
	return RoleIntermediate
}

// IsSelfSigned reports whether c is issued by itself: same subject and issuer
// and a signature that verifies with its own key.
func IsSelfSigned(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return c.CheckSignatureFrom(c) == nil || c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// Fingerprint is the lowercase hex SHA-256 of the certificate's DER: meshca's
// identity for a certificate, since every tools/certs generation reuses the
// same subject names (istio-ca-facts.md §6).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// ShortFingerprint is the first 12 hex digits of Fingerprint, for tables.
func ShortFingerprint(c *x509.Certificate) string {
	return Fingerprint(c)[:12]
}

// Serial formats a serial number as istioctl prints it: lowercase hex
// without leading zeros.
func Serial(c *x509.Certificate) string {
	return c.SerialNumber.Text(16)
}

// EncodeCert returns the PEM encoding of c.
func EncodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// EncodeCerts concatenates the PEM encodings of certs.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(EncodeCert(c))
	}
	return b.Bytes()
}

// Contains reports whether certs holds a certificate with c's fingerprint.
func Contains(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if bytes.Equal(x.Raw, c.Raw) {
			return true
		}
	}
	return false
}

// Unique returns certs without repeats (by DER), first occurrence kept, and
// the number of duplicates dropped.
func Unique(certs []*x509.Certificate) ([]*x509.Certificate, int) {
	seen := map[string]bool{}
	var out []*x509.Certificate
	for _, c := range certs {
		fp := Fingerprint(c)
		if seen[fp] {
			continue
		}
		seen[fp] = true
		out = append(out, c)
	}
	return out, len(certs) - len(out)
}

// Fingerprints returns the fingerprints of certs in order.
func Fingerprints(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = Fingerprint(c)
	}
	return out
}

// SubjectString renders a certificate's subject in RFC 2253 form
// ("CN=Root CA,O=Istio").
func SubjectString(c *x509.Certificate) string { return c.Subject.String() }

// IssuerString renders the issuer like SubjectString.
func IssuerString(c *x509.Certificate) string { return c.Issuer.String() }

// SANs lists the subject alternative names of c as "DNS:x", "URI:y", "IP:z".
func SANs(c *x509.Certificate) []string {
	var out []string
	for _, d := range c.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, u := range c.URIs {
		out = append(out, "URI:"+u.String())
	}
	for _, ip := range c.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	for _, e := range c.EmailAddresses {
		out = append(out, "email:"+e)
	}
	return out
}

// DaysLeft is the number of whole days until c expires at now (negative once
// expired).
func DaysLeft(c *x509.Certificate, now time.Time) int {
	return int(math.Floor(c.NotAfter.Sub(now).Hours() / 24))
}
