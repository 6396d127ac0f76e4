package bundle

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Phase is a step of the three-phase rotation (istio-ca-facts.md §5).
type Phase string

// The rotation phases, in order.
const (
	PhaseTrust  Phase = "trust"
	PhaseIssue  Phase = "issue"
	PhaseRetire Phase = "retire"
)

// Phases lists the phases in order.
var Phases = []Phase{PhaseTrust, PhaseIssue, PhaseRetire}

// ParsePhase validates a --phase value.
func ParsePhase(s string) (Phase, error) {
	for _, p := range Phases {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown phase %q: use trust, issue or retire", s)
}

// Reload says how istiod takes a change of its loaded bundle.
type Reload string

// Reload outcomes.
const (
	// ReloadNone: nothing changed.
	ReloadNone Reload = "none"
	// ReloadSigner: same root-cert.pem, new signing material; hot-reloaded.
	ReloadSigner Reload = "signer"
	// ReloadRoots: root-cert.pem changed within the containment rule; hot-
	// reloaded when ISTIO_MULTIROOT_MESH=true.
	ReloadRoots Reload = "roots"
)

// Transition checks a change of istiod's bundle from cur to next against
// istiod 1.28's hot-reload rule (istio-ca-facts.md §1): a change of
// root-cert.pem is taken only with ISTIO_MULTIROOT_MESH=true and only when
// one file's bytes contain the other's; otherwise istiod ignores the WHOLE
// update until it restarts. 1.31's set comparison is weaker, so a change
// that passes here passes there too.
func Transition(cur, next *Bundle, multiRoot bool) (Reload, error) {
	if bytes.Equal(cur.RootCert, next.RootCert) {
		if cur.Equal(next) {
			return ReloadNone, nil
		}
		return ReloadSigner, nil
	}
	if !multiRoot {
		return "", fmt.Errorf("%s differs from the one istiod has loaded: with ISTIO_MULTIROOT_MESH unset istiod logs %q and ignores the whole update; set it (Helm: --set pilot.env.ISTIO_MULTIROOT_MESH=true) or restart istiod",
			next.path(RootCertFile), "Multi root is disabled, updating new ROOT-CA not supported")
	}
	if !bytes.Contains(next.RootCert, cur.RootCert) && !bytes.Contains(cur.RootCert, next.RootCert) {
		return "", fmt.Errorf("%s neither contains the bytes of %s nor is contained in them: istiod 1.28 logs %q and ignores the whole update; build the bundle with `meshca ca bundle`, which appends to the exact current bytes",
			next.path(RootCertFile), cur.path(RootCertFile), "Updating new ROOT-CA not supported")
	}
	return ReloadRoots, nil
}

// Build makes the bundle of phase from cur (the bundle in use now) and next
// (the new CA: for trust only its root-cert.pem is used). The result is
// validated as istiod validates at load and checked against the hot-reload
// rule from cur; a bundle istiod would reject or ignore is never returned.
// Building a phase that cur already reached returns an equal bundle, so the
// phases chain and re-running one is harmless.
func Build(phase Phase, cur, next *Bundle, now time.Time) (*Bundle, error) {
	if err := Validate(cur, now); err != nil {
		return nil, fmt.Errorf("current bundle: %w", err)
	}
	// The new CA is judged as material about to be installed; the trust
	// phase may get only its roots (checked in trust).
	if len(next.CACert) > 0 {
		if err := ValidateNew(next, now); err != nil {
			return nil, fmt.Errorf("new CA: %w", err)
		}
	}
	var (
		out *Bundle
		err error
	)
	switch phase {
	case PhaseTrust:
		out, err = trust(cur, next)
	case PhaseIssue:
		out, err = issue(cur, next, now)
	case PhaseRetire:
		out, err = retire(cur, next, now)
	default:
		return nil, fmt.Errorf("unknown phase %q", phase)
	}
	if err != nil {
		return nil, fmt.Errorf("phase %s: %w", phase, err)
	}
	out.Source = "phase " + string(phase) + " bundle"
	if err := Validate(out, now); err != nil {
		return nil, fmt.Errorf("phase %s: the resulting bundle would be rejected by istiod: %w", phase, err)
	}
	if _, err := Transition(cur, out, true); err != nil {
		return nil, fmt.Errorf("phase %s: %w", phase, err)
	}
	return out, nil
}

// trust keeps cur's signer and appends to the exact bytes of cur's
// root-cert.pem each root of next that cur does not hold yet.
func trust(cur, next *Bundle) (*Bundle, error) {
	curRoots, err := cur.ParseRoots()
	if err != nil {
		return nil, err
	}
	newRoots, err := next.ParseRoots()
	if err != nil {
		return nil, err
	}
	out := cur.Clone()
	for _, r := range newRoots {
		if err := pki.CheckKeyAlgorithm(r); err != nil {
			return nil, fmt.Errorf("%s: %w", next.path(RootCertFile), err)
		}
		if pki.RoleOf(r) != pki.RoleRoot {
			return nil, fmt.Errorf("%s: %q is not a self-signed CA certificate", next.path(RootCertFile), r.Subject.CommonName)
		}
		if err := pki.CheckRootForIntermediates(r); err != nil {
			return nil, fmt.Errorf("%s: %w", next.path(RootCertFile), err)
		}
		if !pki.Contains(curRoots, r) {
			out.RootCert = appendPEM(out.RootCert, pki.EncodeCert(r))
			curRoots = append(curRoots, r)
		}
	}
	return out, nil
}

// issue switches to next's signer. root-cert.pem becomes cur's bytes plus
// the new root once more: a byte superset that differs from cur, so istiod
// 1.28 hot-reloads it and PCDS pushes a changed bundle that makes envoys
// re-sign their certificates.
func issue(cur, next *Bundle, now time.Time) (*Bundle, error) {
	p, err := next.Parse()
	if err != nil {
		return nil, err
	}
	newRoot, err := signerRoot(next, p, now)
	if err != nil {
		return nil, err
	}
	curRoots, err := cur.ParseRoots()
	if err != nil {
		return nil, err
	}
	if !pki.Contains(curRoots, newRoot) {
		return nil, fmt.Errorf("the new root %q (%s) is not trusted by the current bundle yet: build and roll out the trust phase first",
			newRoot.Subject.CommonName, pki.ShortFingerprint(newRoot))
	}
	out := cur.Clone()
	out.CACert, out.CAKey, out.CertChain = bytes.Clone(next.CACert), bytes.Clone(next.CAKey), bytes.Clone(next.CertChain)
	if bytes.Equal(cur.CACert, next.CACert) && bytes.Equal(cur.CAKey, next.CAKey) && bytes.Equal(cur.CertChain, next.CertChain) {
		return out, nil // already issuing from next's signer
	}
	out.RootCert = appendPEM(out.RootCert, pki.EncodeCert(newRoot))
	return out, nil
}

// retire keeps next's signer and reduces root-cert.pem to the new root,
// taking its exact bytes from cur's file so that the containment rule holds.
func retire(cur, next *Bundle, now time.Time) (*Bundle, error) {
	p, err := next.Parse()
	if err != nil {
		return nil, err
	}
	newRoot, err := signerRoot(next, p, now)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(cur.CACert, next.CACert) {
		return nil, fmt.Errorf("the current bundle still signs with %s, not the new intermediate: complete the issue phase (and let every leaf be re-issued) before retiring the old root",
			cur.path(CACertFile))
	}
	rootBytes, err := exactBlock(cur, newRoot)
	if err != nil {
		return nil, err
	}
	out := cur.Clone()
	out.RootCert = rootBytes
	return out, nil
}

// SignerRoot returns the root of b's root-cert.pem that b's signing
// certificate chains to at now.
func SignerRoot(b *Bundle, now time.Time) (*x509.Certificate, error) {
	p, err := b.Parse()
	if err != nil {
		return nil, err
	}
	return signerRoot(b, p, now)
}

// signerRoot returns the root of next's root-cert.pem that next's signer
// chains to.
func signerRoot(next *Bundle, p *Parsed, now time.Time) (*x509.Certificate, error) {
	chains, err := p.chains(now)
	if err != nil {
		return nil, fmt.Errorf("%s does not chain to %s: %w", next.path(CACertFile), next.path(RootCertFile), err)
	}
	chain := chains[0]
	return chain[len(chain)-1], nil
}

// exactBlock returns the bytes of root's PEM block as they stand in cur's
// root-cert.pem.
func exactBlock(cur *Bundle, root *x509.Certificate) ([]byte, error) {
	blocks, err := pki.DecodeBlocks(cur.path(RootCertFile), cur.RootCert)
	if err != nil {
		return nil, err
	}
	for _, b := range blocks {
		if b.Type == "CERTIFICATE" && bytes.Equal(b.Bytes, root.Raw) {
			return bytes.Clone(cur.RootCert[b.Start:b.End]), nil
		}
	}
	return nil, fmt.Errorf("%s does not hold the new root %q (%s): the trust and issue phases must come first",
		cur.path(RootCertFile), root.Subject.CommonName, pki.ShortFingerprint(root))
}

// appendPEM appends block to data, adding the newline data lacks.
func appendPEM(data, block []byte) []byte {
	out := bytes.Clone(data)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, block...)
}
