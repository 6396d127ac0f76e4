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
	// Fix says what to do, when Check knows.
	Fix string `json:"fix,omitempty"`
}

func (f Finding) String() string {
	if f.Fix == "" {
		return fmt.Sprintf("%s: %s", f.File, f.Message)
	}
	return fmt.Sprintf("%s: %s (fix: %s)", f.File, f.Message, f.Fix)
}

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

// addPolicy records a *pki.PolicyError (or any error) with its fix.
func (r *Report) addPolicy(sev Severity, file string, err error) {
	f := Finding{Severity: sev, File: file, Message: err.Error()}
	var pe *pki.PolicyError
	if errors.As(err, &pe) {
		f.Message, f.Fix = pe.Problem, pe.Fix
		if pe.Unusable {
			f.Severity = SeverityError
		}
	}
	r.Findings = append(r.Findings, f)
}

// CheckOptions tunes Check.
type CheckOptions struct {
	Now time.Time
	// WarnWithin reports certificates expiring within this duration.
	WarnWithin time.Duration
	// NewCA judges b as a CA about to be installed: a key the data plane
	// cannot verify, a signer that outlives its root or expires within one
	// workload certificate lifetime are errors. Without it (the bundle in use
	// now, which a rotation replaces) they are warnings, so that meshca can
	// rotate away from weak material. A path length that forbids leaves and
	// an algorithm istiod cannot use are errors either way: istiod cannot
	// issue working certificates from such a bundle at all.
	NewCA bool
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
	if _, err := p.chains(opts.Now); err != nil {
		r.add(SeverityError, caCert, "does not chain to a root in %s through %s: %v", rootFile, chainFile, err)
	}

	checkPolicy(r, b, p, opts)

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

// Validate returns Check's errors, or nil when istiod would load b and issue
// working certificates from it. Use it for the bundle in use now.
func Validate(b *Bundle, now time.Time) error {
	return Check(b, CheckOptions{Now: now}).Err()
}

// ValidateNew is Validate for a CA about to be installed (CheckOptions.NewCA):
// weak keys and lifetimes that break leaves are errors too.
func ValidateNew(b *Bundle, now time.Time) error {
	return Check(b, CheckOptions{Now: now, NewCA: true}).Err()
}

// checkPolicy adds what istiod's own load check misses but the mesh chokes
// on: key algorithms and sizes the data plane cannot verify, a path length
// that leaves no room for the leaves, a signer outliving its root or
// expiring before the leaves it issues.
func checkPolicy(r *Report, b *Bundle, p *Parsed, opts CheckOptions) {
	weak := SeverityWarning
	if opts.NewCA {
		weak = SeverityError
	}
	seen := map[string]bool{}
	for _, fc := range certsByFile(b, p) {
		fp := pki.Fingerprint(fc.cert)
		if seen[fp] {
			continue
		}
		seen[fp] = true
		if err := pki.CheckKeyAlgorithm(fc.cert); err != nil {
			r.addPolicy(weak, fc.file, err)
		}
	}
	chain := verifiedChain(p, opts.Now)
	if chain == nil {
		return // the chain error is already reported
	}
	if err := pki.CheckLeafRoom(chain); err != nil {
		r.addPolicy(weak, b.path(CACertFile), err)
	}
	if err := pki.CheckLifetime(chain, opts.Now); err != nil {
		r.addPolicy(weak, b.path(CACertFile), err)
	}
}

type fileCert struct {
	file string
	cert *x509.Certificate
}

// certsByFile lists every certificate of p with the file it came from.
func certsByFile(b *Bundle, p *Parsed) []fileCert {
	out := []fileCert{{b.path(CACertFile), p.Signer}}
	for _, c := range p.Chain {
		out = append(out, fileCert{b.path(CertChainFile), c})
	}
	for _, c := range p.Roots {
		out = append(out, fileCert{b.path(RootCertFile), c})
	}
	return out
}

// chains verifies p's signer as istiod does: against the roots of
// root-cert.pem, with cert-chain.pem as intermediates, at now.
func (p *Parsed) chains(now time.Time) ([][]*x509.Certificate, error) {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range p.Roots {
		roots.AddCert(c)
	}
	for _, c := range p.Chain {
		inter.AddCert(c)
	}
	return p.Signer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now})
}

// verifiedChain returns the chain from p's signer to a root of p that leaves
// the most room for leaves, or nil when the signer does not chain.
func verifiedChain(p *Parsed, now time.Time) []*x509.Certificate {
	chains, err := p.chains(now)
	if err != nil || len(chains) == 0 {
		return nil
	}
	for _, c := range chains {
		if pki.CheckLeafRoom(c) == nil {
			return c
		}
	}
	return chains[0]
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
