package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"time"
)

// What Istio's data plane can verify, and so what meshca accepts as CA
// material. ztunnel verifies chains with rustls/webpki, whose signature
// algorithms are ECDSA P-256 and P-384, Ed25519 and RSA of 2048 to 8192
// bits; istiod signs with Go's crypto/x509, which cannot verify DSA at all.
const (
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = 2048
	// MaxRSABits is the largest RSA modulus webpki verifies.
	MaxRSABits = 8192
)

// LeafTTL is how long the workload certificates istiod issues live by
// default (DEFAULT_WORKLOAD_CERT_TTL / SECRET_TTL, 24h). A signing CA that
// expires sooner issues leaves that outlive it (istiod 1.28, istio#18990).
const LeafTTL = 24 * time.Hour

// PolicyError is CA material meshca refuses, with the fix.
type PolicyError struct {
	// Problem says what is wrong, naming the certificate.
	Problem string
	// Fix says what to do instead.
	Fix string
	// Unusable is set when istiod cannot issue working certificates from
	// the material at all (rather than the material being weak).
	Unusable bool
}

func (e *PolicyError) Error() string { return e.Problem + " (fix: " + e.Fix + ")" }

func policyErr(fix, format string, args ...any) *PolicyError {
	return &PolicyError{Problem: fmt.Sprintf(format, args...), Fix: fix}
}

// fixKey is the fix for every key the data plane cannot use.
const fixKey = "use a CA with an RSA 2048-4096 or ECDSA P-256/P-384 key; meshca ca root and meshca ca intermediate generate them (--key-type)"

// CheckKeyAlgorithm refuses a certificate whose public key the data plane
// cannot verify: DSA, RSA below 2048 or above 8192 bits, ECDSA curves other
// than P-256 and P-384, or an algorithm Go cannot even parse. The error names
// the certificate and the algorithm by its real name.
func CheckKeyAlgorithm(c *x509.Certificate) error {
	name := fmt.Sprintf("%q (%s)", c.Subject.CommonName, ShortFingerprint(c))
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		if bits < MinRSABits {
			return policyErr(fixKey, "%s has an RSA %d key: below %d bits, ztunnel (rustls/webpki) rejects every chain it signs, and it is breakable", name, bits, MinRSABits)
		}
		if bits > MaxRSABits {
			return policyErr(fixKey, "%s has an RSA %d key: above %d bits, ztunnel (rustls/webpki) rejects every chain it signs", name, bits, MaxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return policyErr(fixKey, "%s has an ECDSA %s key: ztunnel (rustls/webpki) verifies only P-256 and P-384 signatures", name, k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	e := policyErr(fixKey, "%s has a %s key: istiod (Go crypto/x509) cannot verify or sign with it", name, AlgorithmName(c))
	e.Unusable = true
	return e
}

// AlgorithmName names the public key algorithm of c as people know it
// ("DSA", "RSA", "ECDSA", "Ed25519"), also when Go could not parse the key.
func AlgorithmName(c *x509.Certificate) string {
	if c.PublicKeyAlgorithm == x509.UnknownPublicKeyAlgorithm {
		return "unknown (not RSA, ECDSA or Ed25519)"
	}
	return c.PublicKeyAlgorithm.String()
}

// pathLen returns c's path length constraint and whether it has one.
func pathLen(c *x509.Certificate) (int, bool) {
	if !c.BasicConstraintsValid || c.MaxPathLen < 0 || (c.MaxPathLen == 0 && !c.MaxPathLenZero) {
		return 0, false
	}
	return c.MaxPathLen, true
}

// CheckRootForIntermediates refuses a root that cannot carry meshca's
// layout: an intermediate (the signing CA istiod holds) under the root, and
// the leaves under it. A path length of 0 forbids that intermediate.
func CheckRootForIntermediates(root *x509.Certificate) error {
	if n, ok := pathLen(root); ok && n < 1 {
		e := policyErr("use a root without a path length constraint, as tools/certs and meshca ca root make it (or with pathlen of at least 1)",
			"root %q (%s) has pathlen:0: no intermediate may sit under it, so workload certificates signed by an intermediate under it fail verification (\"too many intermediates for path length constraint\")",
			root.Subject.CommonName, ShortFingerprint(root))
		e.Unusable = true
		return e
	}
	return nil
}

// CheckLeafRoom checks that the signing CA at chain[0], with the chain up to
// the root at chain[len-1], may issue leaf certificates: every CA of the chain
// must allow the CAs below it. A leaf issued by chain[0] sits under i CAs
// below chain[i], and a pathlen smaller than i makes every peer reject it.
func CheckLeafRoom(chain []*x509.Certificate) error {
	for i, c := range chain {
		n, ok := pathLen(c)
		if !ok || i <= n {
			continue
		}
		role := "intermediate"
		if i == len(chain)-1 {
			role = "root"
		}
		e := policyErr(fmt.Sprintf("issue the chain again without that constraint, or with pathlen of at least %d on %q", i, c.Subject.CommonName),
			"%s %q (%s) has pathlen:%d but leaves signed by %q would sit under %d CA(s) below it: istiod would issue workload certificates every peer rejects (\"too many intermediates for path length constraint\")",
			role, c.Subject.CommonName, ShortFingerprint(c), n, chain[0].Subject.CommonName, i)
		e.Unusable = true
		return e
	}
	return nil
}

// CheckLifetime checks a signing CA's validity against the chain above it
// (chain[0] the signer, chain[len-1] its root) at now: the signer must not
// outlive any CA above it, and must stay valid for at least one workload
// certificate lifetime (LeafTTL).
func CheckLifetime(chain []*x509.Certificate, now time.Time) error {
	signer := chain[0]
	for _, up := range chain[1:] {
		if signer.NotAfter.After(up.NotAfter) {
			return policyErr("issue the intermediate again under that root (meshca ca intermediate clamps its validity to the root's), or rotate to a newer root",
				"%q expires %s, after %q above it (%s): leaves stop verifying when that CA expires, whatever the intermediate says",
				signer.Subject.CommonName, signer.NotAfter.UTC().Format(time.RFC3339), up.Subject.CommonName, up.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if left := signer.NotAfter.Sub(now); left >= 0 && left < LeafTTL {
		return policyErr("issue a new intermediate (meshca ca intermediate) and rotate to it",
			"%q expires %s, in less than the %s lifetime of the workload certificates it would issue: istiod 1.28 issues leaves that outlive it (istio#18990)",
			signer.Subject.CommonName, signer.NotAfter.UTC().Format(time.RFC3339), LeafTTL)
	}
	return nil
}
