// Package proxy reads what Istio's proxies hold and turns it into one neutral
// model: ztunnel's /config_dump certificates, envoy's secrets dump (sidecars,
// gateways, waypoints) and the istio-ca-root-cert ConfigMaps. Readers are pure
// functions over bytes; nothing here touches the network. The model answers
// the questions fleet verification asks of every proxy: which roots does it
// trust (as a set of fingerprints), which certificate signed its leaf, and
// does the leaf chain to a given root. The package also prints the per-pod
// views of `meshca ztunnel certs` and `meshca proxy certs`.
//
// Facts this package relies on are in istio-ca-facts.md §3 (ztunnel) and §4
// (envoy); comments cite them where they explain a decision.
package proxy

import (
	"bytes"
	"crypto/x509"
	"slices"
	"strings"

	"github.com/meshca/meshca/internal/pki"
)

// MaxDumpSize bounds a config dump meshca reads from a file, stdin or a pod.
// A full ztunnel /config_dump on a big node holds every workload and service
// of the mesh, so this is far larger than pki.MaxFileSize.
const MaxDumpSize = 64 << 20

// Cert is one certificate as a proxy holds it.
type Cert struct {
	// X509 is the parsed certificate.
	X509 *x509.Certificate
	// Fingerprint is the SHA-256 of the DER in lowercase hex (pki.Fingerprint):
	// meshca's identity for a certificate.
	Fingerprint string
	// Serial is the serial number in lowercase hex without leading zeros
	// (pki.Serial).
	Serial string
	// Role is what the certificate is by content, never by position.
	Role pki.Role
	// TrustDomain is the SPIFFE trust domain a root is configured for when
	// envoy's ROOTCA is a SPIFFE validator with per-domain bundles; empty
	// otherwise.
	TrustDomain string
	// Reported holds a ztunnel certificate entry exactly as ztunnel wrote
	// it; zero for certificates read from envoy or a ConfigMap.
	Reported Reported
}

// Reported is one certificate entry of a ztunnel dump, verbatim.
type Reported struct {
	// PEM is the "pem" field: base64 of the PEM text (ztunnel >= 1.22) or
	// the PEM text itself (older).
	PEM string
	// SerialNumber is the serial as a decimal string.
	SerialNumber string
	// ValidFrom is the start of validity, RFC 3339 with Z.
	ValidFrom string
	// ExpirationTime is the end of validity, RFC 3339 with Z.
	ExpirationTime string
}

// NewCert derives a Cert from a parsed certificate.
func NewCert(c *x509.Certificate) Cert {
	return Cert{
		X509:        c,
		Fingerprint: pki.Fingerprint(c),
		Serial:      pki.Serial(c),
		Role:        pki.RoleOf(c),
	}
}

// ParseCerts parses every PEM block of data as a certificate (see
// pki.ParseCertificates); name is used in errors.
func ParseCerts(name string, data []byte) ([]Cert, error) {
	parsed, err := pki.ParseCertificates(name, data)
	if err != nil {
		return nil, err
	}
	certs := make([]Cert, len(parsed))
	for i, c := range parsed {
		certs[i] = NewCert(c)
	}
	return certs, nil
}

// Trust is a set of trusted roots identified by fingerprint. Proxies may hold
// the same root several times (ztunnel does not de-duplicate, facts §3), so
// trust is compared as a set and repeats are only counted.
type Trust struct {
	// Roots are the distinct fingerprints, sorted.
	Roots []string
	// Duplicates is how many entries repeated a root already listed.
	Duplicates int
}

// NewTrust builds a Trust from fingerprints, in any order, repeats allowed.
func NewTrust(fingerprints ...string) Trust {
	roots := slices.Clone(fingerprints)
	for i := range roots {
		roots[i] = strings.ToLower(roots[i])
	}
	slices.Sort(roots)
	unique := slices.Compact(roots)
	return Trust{Roots: unique, Duplicates: len(fingerprints) - len(unique)}
}

// TrustOf is the Trust of a list of certificates.
func TrustOf(certs []Cert) Trust {
	fps := make([]string, len(certs))
	for i, c := range certs {
		fps[i] = c.Fingerprint
	}
	return NewTrust(fps...)
}

// Has reports whether the root with fingerprint fp is trusted.
func (t Trust) Has(fp string) bool {
	_, ok := slices.BinarySearch(t.Roots, strings.ToLower(fp))
	return ok
}

// Equal reports whether t and o trust exactly the same roots, ignoring
// duplicates.
func (t Trust) Equal(o Trust) bool { return slices.Equal(t.Roots, o.Roots) }

// Diff compares t with the expected trust: missing are the expected roots t
// lacks, extra the roots t has beyond the expectation.
func (t Trust) Diff(want Trust) (missing, extra []string) {
	for _, fp := range want.Roots {
		if !t.Has(fp) {
			missing = append(missing, fp)
		}
	}
	for _, fp := range t.Roots {
		if !want.Has(fp) {
			extra = append(extra, fp)
		}
	}
	return missing, extra
}

// Identity is one workload identity a proxy holds a certificate for: a
// ztunnel certificates entry, or an envoy's default + ROOTCA secrets (see
// Envoy.Workload).
type Identity struct {
	// Name is the SPIFFE identity (spiffe://<td>/ns/<ns>/sa/<sa>).
	Name string
	// State is the state as reported: for ztunnel "Available",
	// "Initializing" or "Unavailable: <reason>"; for envoy the status of the
	// default secret (ACTIVE or WARMING), empty if it has none.
	State string
	// Chain is the certificate chain, leaf first, as reported. For ztunnel
	// it also holds whatever cert-chain.pem carried, roots included.
	Chain []Cert
	// Roots are the trusted roots as reported (ztunnel rootCerts, envoy
	// ROOTCA), repeats included.
	Roots []Cert
	// Legacy marks a ztunnel entry without rootCerts (ztunnel before 1.26):
	// the trust anchor is then the last chain entry.
	Legacy bool
}

// Status is State as istioctl shows it: "Unavailable: <reason>" becomes
// "Unavailable".
func (id *Identity) Status() string {
	if strings.Contains(id.State, "Unavailable") {
		return "Unavailable"
	}
	return id.State
}

// HasCert reports whether the identity holds a certificate at all; an
// identity without one has nothing to verify.
func (id *Identity) HasCert() bool { return len(id.Chain) > 0 }

// Leaf is the first chain entry, or nil without a chain.
func (id *Identity) Leaf() *Cert {
	if len(id.Chain) == 0 {
		return nil
	}
	return &id.Chain[0]
}

// Anchors are the roots the proxy trusts for this identity: Roots, or for a
// legacy ztunnel entry the last chain entry (facts §3: before 1.26 the root
// was the last certChain entry; such a ztunnel trusts a single root).
func (id *Identity) Anchors() []Cert {
	if id.Legacy {
		if len(id.Chain) < 2 {
			return nil
		}
		return id.Chain[len(id.Chain)-1:]
	}
	return id.Roots
}

// Trust is the set of roots the proxy trusts for this identity.
func (id *Identity) Trust() Trust { return TrustOf(id.Anchors()) }

// Signer is the certificate that signed the leaf, found by signature among
// the rest of the chain and the roots; nil when the dump does not hold it.
func (id *Identity) Signer() *Cert {
	leaf := id.Leaf()
	if leaf == nil {
		return nil
	}
	for _, list := range [][]Cert{id.Chain[1:], id.Roots} {
		for i := range list {
			if issuedBy(leaf.X509, list[i].X509) {
				return &list[i]
			}
		}
	}
	return nil
}

// ChainsTo reports whether the leaf chains to root through signatures, using
// the rest of the chain as intermediates. Validity periods are not checked:
// this answers "which root is this leaf under", not "is it valid now".
func (id *Identity) ChainsTo(root *x509.Certificate) bool {
	leaf := id.Leaf()
	if leaf == nil || root == nil {
		return false
	}
	pool := make([]*x509.Certificate, 0, len(id.Chain)-1)
	for _, c := range id.Chain[1:] {
		pool = append(pool, c.X509)
	}
	return chainsTo(leaf.X509, pool, root)
}

// Anchor is the trust anchor of this identity (see Anchors) that its own
// leaf chains to, or nil if none does.
func (id *Identity) Anchor() *Cert {
	anchors := id.Anchors()
	for i := range anchors {
		if id.ChainsTo(anchors[i].X509) {
			return &anchors[i]
		}
	}
	return nil
}

// issuedBy reports whether parent signed child: names match and the
// signature verifies with parent's key (parent must be a CA).
func issuedBy(child, parent *x509.Certificate) bool {
	return bytes.Equal(child.RawIssuer, parent.RawSubject) && child.CheckSignatureFrom(parent) == nil
}

// chainsTo walks from c up through pool to root by signatures. It is a
// depth-first search bounded by the pool size, so loops cannot hang it.
func chainsTo(c *x509.Certificate, pool []*x509.Certificate, root *x509.Certificate) bool {
	if bytes.Equal(c.Raw, root.Raw) || issuedBy(c, root) {
		return true
	}
	for i, p := range pool {
		if bytes.Equal(p.Raw, c.Raw) || !issuedBy(c, p) {
			continue
		}
		rest := slices.Delete(slices.Clone(pool), i, i+1)
		if chainsTo(p, rest, root) {
			return true
		}
	}
	return false
}
