package proxy

import (
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"time"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
)

// APIVersion versions the JSON documents of this package. Fields are only
// ever added within a version; a removal or change of meaning bumps it.
const APIVersion = "meshca.io/v1alpha1"

// Kinds of the JSON documents.
const (
	KindZtunnel = "ZtunnelCertificates"
	KindEnvoy   = "ProxyCertificates"
)

// PrintOptions control the per-pod views.
type PrintOptions struct {
	// Format is table (default), wide, json or yaml.
	Format report.Format
	// Now decides the VALID CERT column.
	Now time.Time
	// Source names where the dump came from ("pod istio-system/ztunnel-x",
	// "file dump.json"); it goes into JSON output only.
	Source string
}

// ZtunnelDoc is the JSON/YAML document of `meshca ztunnel certs -o json`.
type ZtunnelDoc struct {
	// APIVersion is APIVersion.
	APIVersion string `json:"apiVersion"`
	// Kind is "ZtunnelCertificates".
	Kind string `json:"kind"`
	// Source is where the dump came from.
	Source string `json:"source,omitempty"`
	// Identities are the ztunnel's identities in dump order; empty (never
	// null) for a ztunnel with nothing to verify.
	Identities []IdentityDoc `json:"identities"`
	// Warnings are the same notes printed on stderr.
	Warnings []string `json:"warnings,omitempty"`
}

// IdentityDoc is one ztunnel identity.
type IdentityDoc struct {
	// Identity is the SPIFFE ID.
	Identity string `json:"identity"`
	// State is ztunnel's state verbatim ("Unavailable: <reason>" included).
	State string `json:"state"`
	// Status is State as the table shows it (Available, Initializing,
	// Unavailable).
	Status string `json:"status"`
	// LegacyFormat is true for a dump without rootCerts (ztunnel < 1.26).
	LegacyFormat bool `json:"legacyFormat"`
	// Certificates lists certChain then rootCerts entries, as reported.
	Certificates []CertDoc `json:"certificates"`
	// Trust is the set of roots trusted for this identity.
	Trust TrustDoc `json:"trust"`
	// Signer is the fingerprint of the certificate that signed the leaf,
	// empty when the dump does not hold it.
	Signer string `json:"signer,omitempty"`
	// Anchor is the fingerprint of the trusted root the leaf chains to,
	// empty when it chains to none of them.
	Anchor string `json:"anchor,omitempty"`
}

// CertDoc is one certificate.
type CertDoc struct {
	// Field is where the certificate was found: certChain or rootCerts
	// (ztunnel); certificate_chain or trusted_ca (envoy).
	Field string `json:"field"`
	// Index is the 0-based position within Field.
	Index int `json:"index"`
	// Type is the TYPE column: Leaf, Intermediate or Root for ztunnel; Cert
	// Chain or CA for envoy.
	Type string `json:"type"`
	// Role is what the certificate is by content: leaf, intermediate, root.
	Role pki.Role `json:"role"`
	// Valid is whether now lies within the validity period.
	Valid bool `json:"valid"`
	// SerialNumber is lowercase hex without leading zeros.
	SerialNumber string `json:"serialNumber"`
	// NotBefore and NotAfter are RFC 3339 in UTC.
	NotBefore string `json:"notBefore"`
	NotAfter  string `json:"notAfter"`
	// Fingerprint is the SHA-256 of the DER, lowercase hex.
	Fingerprint string `json:"fingerprint"`
	// Subject and Issuer are RFC 2253 names.
	Subject string `json:"subject"`
	Issuer  string `json:"issuer"`
	// SANs are "DNS:x", "URI:y", "IP:z".
	SANs []string `json:"sans,omitempty"`
	// TrustDomain is set for roots of a SPIFFE validator bundle.
	TrustDomain string `json:"trustDomain,omitempty"`
}

// TrustDoc is a Trust.
type TrustDoc struct {
	// Roots are the distinct root fingerprints, sorted; never null.
	Roots []string `json:"roots"`
	// Duplicates counts entries that repeated a listed root.
	Duplicates int `json:"duplicates"`
}

// EnvoyDoc is the JSON/YAML document of `meshca proxy certs -o json`.
type EnvoyDoc struct {
	// APIVersion is APIVersion.
	APIVersion string `json:"apiVersion"`
	// Kind is "ProxyCertificates".
	Kind string `json:"kind"`
	// Source is where the dump came from.
	Source string `json:"source,omitempty"`
	// Workload summarises the default and ROOTCA secrets.
	Workload WorkloadDoc `json:"workload"`
	// Secrets are all dynamic secrets, warming first, never null.
	Secrets []SecretDoc `json:"secrets"`
	// Warnings are the same notes printed on stderr.
	Warnings []string `json:"warnings,omitempty"`
}

// WorkloadDoc is the workload identity of an envoy proxy (Envoy.Workload).
type WorkloadDoc struct {
	// Identity is the leaf's SPIFFE ID, or "default" without a leaf.
	Identity string `json:"identity"`
	// State is the status of the default secret (ACTIVE, WARMING) or empty.
	State string `json:"state"`
	// Trust is the set of roots of the active ROOTCA.
	Trust TrustDoc `json:"trust"`
	// Signer is the fingerprint of the certificate that signed the leaf.
	Signer string `json:"signer,omitempty"`
	// Anchor is the fingerprint of the trusted root the leaf chains to.
	Anchor string `json:"anchor,omitempty"`
}

// SecretDoc is one envoy secret.
type SecretDoc struct {
	// Name is the SDS resource name (default, ROOTCA, kubernetes://...).
	Name string `json:"name"`
	// Status is ACTIVE or WARMING.
	Status string `json:"status"`
	// VersionInfo and LastUpdated are as envoy reported them.
	VersionInfo string `json:"versionInfo,omitempty"`
	LastUpdated string `json:"lastUpdated,omitempty"`
	// Source is set when envoy holds the data by reference (a file).
	Source string `json:"source,omitempty"`
	// Certificates lists the chain then the trusted CAs; never null.
	Certificates []CertDoc `json:"certificates"`
}

// NewZtunnelDoc builds the JSON document of a ztunnel dump.
func NewZtunnelDoc(z *Ztunnel, source string, now time.Time) ZtunnelDoc {
	doc := ZtunnelDoc{APIVersion: APIVersion, Kind: KindZtunnel, Source: source, Identities: []IdentityDoc{}, Warnings: z.Warnings()}
	for i := range z.Identities {
		id := &z.Identities[i]
		d := IdentityDoc{
			Identity:     id.Name,
			State:        id.State,
			Status:       id.Status(),
			LegacyFormat: id.Legacy,
			Certificates: []CertDoc{},
			Trust:        trustDoc(id.Trust()),
			Signer:       fingerprintOf(id.Signer()),
			Anchor:       fingerprintOf(id.Anchor()),
		}
		for j := range id.Chain {
			d.Certificates = append(d.Certificates, certDoc("certChain", j, ztunnelType(id, j, false), &id.Chain[j], now))
		}
		for j := range id.Roots {
			d.Certificates = append(d.Certificates, certDoc("rootCerts", j, ztunnelType(id, j, true), &id.Roots[j], now))
		}
		doc.Identities = append(doc.Identities, d)
	}
	return doc
}

// NewEnvoyDoc builds the JSON document of an envoy secrets dump.
func NewEnvoyDoc(e *Envoy, source string, now time.Time) EnvoyDoc {
	w := e.Workload()
	doc := EnvoyDoc{
		APIVersion: APIVersion, Kind: KindEnvoy, Source: source,
		Workload: WorkloadDoc{
			Identity: w.Name,
			State:    w.State,
			Trust:    trustDoc(w.Trust()),
			Signer:   fingerprintOf(w.Signer()),
			Anchor:   fingerprintOf(w.Anchor()),
		},
		Secrets:  []SecretDoc{},
		Warnings: e.Warnings(),
	}
	for _, s := range e.Secrets {
		d := SecretDoc{Name: s.Name, Status: s.Status, VersionInfo: s.VersionInfo, LastUpdated: s.LastUpdated, Source: s.Source, Certificates: []CertDoc{}}
		for j := range s.Chain {
			d.Certificates = append(d.Certificates, certDoc("certificate_chain", j, envoyType(&s.Chain[j]), &s.Chain[j], now))
		}
		for j := range s.Roots {
			d.Certificates = append(d.Certificates, certDoc("trusted_ca", j, envoyType(&s.Roots[j]), &s.Roots[j], now))
		}
		doc.Secrets = append(doc.Secrets, d)
	}
	return doc
}

// PrintZtunnel writes the per-pod view of a ztunnel. The table reads as
// `istioctl zc certificates` does (same columns, serials, times, status and
// VALID CERT rules) but labels each certificate by what it is, so a root
// copied into the chain shows as Root. A legacy dump (no rootCerts) prints
// exactly what istioctl prints. wide adds a FINGERPRINT column.
func PrintZtunnel(w io.Writer, z *Ztunnel, opts PrintOptions) error {
	if opts.Format.Structured() {
		return report.Encode(w, opts.Format, NewZtunnelDoc(z, opts.Source, opts.Now))
	}
	wide := opts.Format == report.Wide
	headers := []string{"CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"}
	if wide {
		headers = append(headers, "FINGERPRINT")
	}
	t := report.NewTable(w, headers...)
	for i := range z.Identities {
		id := &z.Identities[i]
		status := id.Status()
		if len(id.Chain) == 0 {
			// istioctl prints NA columns and false for an identity without a
			// chain, and no roots even if some were reported.
			row := []string{id.Name, "NA", status, "false", "NA", "NA", "NA"}
			if wide {
				row = append(row, "NA")
			}
			t.Row(row...)
			continue
		}
		for j := range id.Chain {
			t.Row(ztunnelRow(id.Name, ztunnelType(id, j, false), status, &id.Chain[j], opts.Now, wide)...)
		}
		for j := range id.Roots {
			t.Row(ztunnelRow(id.Name, ztunnelType(id, j, true), status, &id.Roots[j], opts.Now, wide)...)
		}
	}
	return t.Flush()
}

// PrintEnvoy writes the per-pod view of an envoy proxy, as `istioctl pc
// secret` prints it (same columns, types, status, serial and time formats)
// except that ROOTCA gets one row per root where istioctl shows only the
// first. wide adds a FINGERPRINT column.
func PrintEnvoy(w io.Writer, e *Envoy, opts PrintOptions) error {
	if opts.Format.Structured() {
		return report.Encode(w, opts.Format, NewEnvoyDoc(e, opts.Source, opts.Now))
	}
	if len(e.Secrets) == 0 {
		_, err := fmt.Fprintln(w, "No active or warming secrets found.")
		return err
	}
	type row struct {
		cells []string
		td    string
		fp    string
	}
	var rows []row
	certRow := func(s *Secret, c *Cert, td string) row {
		return row{
			cells: []string{s.Name, envoyType(c), s.Status, fmt.Sprint(valid(c.X509, opts.Now)), envoySerial(c.X509.SerialNumber),
				c.X509.NotAfter.UTC().Format(time.RFC3339), c.X509.NotBefore.UTC().Format(time.RFC3339)},
			td: td,
			fp: pki.ShortFingerprint(c.X509),
		}
	}
	for i := range e.Secrets {
		s := &e.Secrets[i]
		if len(s.Chain) > 0 {
			// istioctl shows the first certificate of a chain: the leaf.
			td := ""
			if u := spiffeID(&s.Chain[0]); u != nil {
				td = u.Host
			}
			rows = append(rows, certRow(s, &s.Chain[0], td))
		}
		for j := range s.Roots {
			rows = append(rows, certRow(s, &s.Roots[j], s.Roots[j].TrustDomain))
		}
		if len(s.Chain) == 0 && len(s.Roots) == 0 {
			rows = append(rows, row{cells: []string{s.Name, "", s.Status, "false", "", "", ""}})
		}
	}
	// Like istioctl, show trust domains only when every row has one
	// (trust domain federation through a SPIFFE validator).
	withTD := true
	for _, r := range rows {
		if r.td == "" {
			withTD = false
		}
	}
	headers := []string{"RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"}
	if withTD {
		headers = append(headers, "TRUST DOMAIN")
	}
	wide := opts.Format == report.Wide
	if wide {
		headers = append(headers, "FINGERPRINT")
	}
	t := report.NewTable(w, headers...)
	for _, r := range rows {
		cells := r.cells
		if withTD {
			cells = append(cells, r.td)
		}
		if wide {
			cells = append(cells, r.fp)
		}
		t.Row(cells...)
	}
	return t.Flush()
}

func ztunnelRow(name, typ, status string, c *Cert, now time.Time, wide bool) []string {
	rep := c.Reported
	notAfter, notBefore := rep.ExpirationTime, rep.ValidFrom
	if notAfter == "" {
		notAfter = c.X509.NotAfter.UTC().Format(time.RFC3339)
	}
	if notBefore == "" {
		notBefore = c.X509.NotBefore.UTC().Format(time.RFC3339)
	}
	row := []string{name, typ, status, fmt.Sprint(reportedValid(notBefore, notAfter, now)), ztunnelSerial(c), notAfter, notBefore}
	if wide {
		row = append(row, pki.ShortFingerprint(c.X509))
	}
	return row
}

// ztunnelType is the TYPE of certificate j of id. istioctl decides by
// position: chain[0] Leaf, other chain entries Intermediate, rootCerts Root,
// and in the legacy format the last chain entry Root. meshca decides by
// content, except for the legacy format where it prints what istioctl prints.
func ztunnelType(id *Identity, j int, root bool) string {
	if id.Legacy && !root {
		switch {
		case j == 0:
			return "Leaf"
		case j == len(id.Chain)-1:
			return "Root"
		default:
			return "Intermediate"
		}
	}
	c := &id.Chain
	if root {
		c = &id.Roots
	}
	return roleLabel((*c)[j].Role)
}

func roleLabel(r pki.Role) string {
	switch r {
	case pki.RoleRoot:
		return "Root"
	case pki.RoleIntermediate:
		return "Intermediate"
	}
	return "Leaf"
}

// envoyType is istioctl pc secret's TYPE: CA for a CA certificate, Cert
// Chain otherwise.
func envoyType(c *Cert) string {
	if c.X509.IsCA {
		return "CA"
	}
	return "Cert Chain"
}

// ztunnelSerial is istioctl zc certificates' serial: the reported decimal
// serial in lowercase hex without leading zeros; the parsed serial when the
// report lacks one.
func ztunnelSerial(c *Cert) string {
	if n, ok := new(big.Int).SetString(c.Reported.SerialNumber, 10); ok {
		return n.Text(16)
	}
	return c.Serial
}

// envoySerial is istioctl pc secret's serial: lowercase hex zero-padded to
// 32 digits (istioctl formats it with %032x).
func envoySerial(n *big.Int) string { return fmt.Sprintf("%032x", n) }

// reportedValid is istioctl's VALID CERT rule for ztunnel: both reported
// times parse as RFC 3339 and now lies strictly between them.
func reportedValid(from, to string, now time.Time) bool {
	f, err1 := time.Parse(time.RFC3339, from)
	t, err2 := time.Parse(time.RFC3339, to)
	return err1 == nil && err2 == nil && now.After(f) && now.Before(t)
}

// valid is istioctl pc secret's VALID CERT rule: now lies strictly within
// the validity period.
func valid(c *x509.Certificate, now time.Time) bool {
	return now.After(c.NotBefore) && now.Before(c.NotAfter)
}

func certDoc(field string, index int, typ string, c *Cert, now time.Time) CertDoc {
	sans := pki.SANs(c.X509)
	return CertDoc{
		Field:        field,
		Index:        index,
		Type:         typ,
		Role:         c.Role,
		Valid:        valid(c.X509, now),
		SerialNumber: c.Serial,
		NotBefore:    c.X509.NotBefore.UTC().Format(time.RFC3339),
		NotAfter:     c.X509.NotAfter.UTC().Format(time.RFC3339),
		Fingerprint:  c.Fingerprint,
		Subject:      pki.SubjectString(c.X509),
		Issuer:       pki.IssuerString(c.X509),
		SANs:         sans,
		TrustDomain:  c.TrustDomain,
	}
}

func trustDoc(t Trust) TrustDoc {
	roots := t.Roots
	if roots == nil {
		roots = []string{}
	}
	return TrustDoc{Roots: roots, Duplicates: t.Duplicates}
}

func fingerprintOf(c *Cert) string {
	if c == nil {
		return ""
	}
	return c.Fingerprint
}
