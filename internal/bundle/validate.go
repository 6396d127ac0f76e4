package bundle

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Severity ranks a Finding.
type Severity string

// Finding severities: an error makes istiod refuse the bundle, a warning
// does not.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Finding is one result of Check.
type Finding struct {
	Severity Severity `json:"severity"`
	File     string   `json:"file"`
	Message  string   `json:"message"`
}

func (f Finding) String() string { return fmt.Sprintf("%s: %s", f.File, f.Message) }

// Report is the outcome of Check.
type Report struct {
	// Parsed is nil when a file could not be parsed at all.
	Parsed   *Parsed   `json:"-"`
	Findings []Finding `json:"findings"`
}

// Err joins the error findings; nil when istiod would accept the bundle.
func (r *Report) Err() error {
	var errs []error
	for _, f := range r.Findings {
		if f.Severity == SeverityError {
			errs = append(errs, errors.New(f.String()))
		}
	}
	return errors.Join(errs...)
}

// Warnings returns the warning findings.
func (r *Report) Warnings() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity == SeverityWarning {
			out = append(out, f)
		}
	}
	return out
}

func (r *Report) add(sev Severity, file, format string, args ...any) {
	r.Findings = append(r.Findings, Finding{Severity: sev, File: file, Message: fmt.Sprintf(format, args...)})
}

// CheckOptions tunes Check.
type CheckOptions struct {
	Now time.Time
	// WarnWithin reports certificates expiring within this duration.
	WarnWithin time.Duration
}

// Check validates b as istiod does when it loads a plug-in CA
// (istio-ca-facts.md §1): every file parses; ca-cert.pem verifies against the
// roots of root-cert.pem with cert-chain.pem as intermediates at opts.Now;
// ca-key.pem parses and matches ca-cert.pem; the signing certificate is a CA.
// It adds warnings istiod does not give: near expiry, duplicate roots,
// non-root certificates in root-cert.pem, a root in cert-chain.pem, a chain
// that does not start with the signing certificate.
func Check(b *Bundle, opts CheckOptions) *Report {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	r := &Report{}
	p, err := b.Parse()
	if err != nil {
		r.add(SeverityError, b.Source, "%v", err)
		return r
	}
	r.Parsed = p
	caCert, chainFile, rootFile := b.path(CACertFile), b.path(CertChainFile), b.path(RootCertFile)

	if n := countCerts(b.CACert); n > 1 {
		r.add(SeverityWarning, caCert, "holds %d certificates; istiod uses only the first as the signing CA", n)
	}
	if !p.Signer.IsCA {
		r.add(SeverityError, caCert, "%q is not a CA (basicConstraints CA:FALSE or absent): istiod cannot sign with it", p.Signer.Subject.CommonName)
	}
	if !pki.KeyMatches(p.Signer, p.Key) {
		r.add(SeverityError, b.path(CAKeyFile), "private key does not match the public key of %s (%s)", caCert, p.Signer.Subject.CommonName)
	}
	checkValidity(r, caCert, p.Signer, opts)
	for _, c := range p.Chain {
		if !c.Equal(p.Signer) {
			checkValidity(r, chainFile, c, opts)
		}
	}
	for _, c := range p.Roots {
		checkValidity(r, rootFile, c, opts)
	}

	// The verification istiod performs: signing cert → cert-chain → roots.
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range p.Roots {
		roots.AddCert(c)
	}
	for _, c := range p.Chain {
		inter.AddCert(c)
	}
	if _, err := p.Signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: opts.Now}); err != nil {
		r.add(SeverityError, caCert, "does not chain to a root in %s through %s: %v", rootFile, chainFile, err)
	}

	if _, dups := pki.Unique(p.Roots); dups > 0 {
		r.add(SeverityWarning, rootFile, "holds %d duplicate root(s); harmless (proxies compare roots as a set) but shown as extra rows by istioctl", dups)
	}
	for i, c := range p.Roots {
		if pki.RoleOf(c) != pki.RoleRoot {
			r.add(SeverityWarning, rootFile, "block %d (%s) is not a self-signed CA; it will be trusted as an anchor anyway", i+1, c.Subject.CommonName)
		}
	}
	if len(p.Chain) > 0 && !p.Chain[0].Equal(p.Signer) {
		r.add(SeverityWarning, chainFile, "does not start with %s: istiod sends cert-chain.pem after every leaf, so proxies may get an incomplete chain", caCert)
	}
	for _, c := range p.Chain {
		if pki.RoleOf(c) == pki.RoleRoot {
			r.add(SeverityWarning, chainFile, "holds root %q (%s) as in the tools/certs layout: proxies list it as a chain entry", c.Subject.CommonName, pki.ShortFingerprint(c))
		}
	}
	return r
}

// Validate returns Check's errors, or nil when istiod would load b.
func Validate(b *Bundle, now time.Time) error {
	return Check(b, CheckOptions{Now: now}).Err()
}

func checkValidity(r *Report, file string, c *x509.Certificate, opts CheckOptions) {
	name := c.Subject.CommonName
	switch {
	case opts.Now.After(c.NotAfter):
		r.add(SeverityError, file, "%q expired on %s", name, c.NotAfter.UTC().Format(time.RFC3339))
	case opts.Now.Before(c.NotBefore):
		r.add(SeverityError, file, "%q is not valid before %s", name, c.NotBefore.UTC().Format(time.RFC3339))
	case opts.WarnWithin > 0 && c.NotAfter.Sub(opts.Now) < opts.WarnWithin:
		r.add(SeverityWarning, file, "%q expires on %s (%d days left)", name, c.NotAfter.UTC().Format(time.RFC3339), pki.DaysLeft(c, opts.Now))
	}
}

func countCerts(data []byte) int {
	blocks, err := pki.DecodeBlocks("", data)
	if err != nil {
		return 0
	}
	return len(blocks)
}
