package rotate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// This file holds the pure derivations of the engine: where a rotation
// stands, whether a run starts a new one, what the fleet must hold in each
// phase and what comes next. Nothing here reads the cluster.

// holding is what a cacerts bundle holds, by fingerprint.
type holding struct {
	// Signer is the signing certificate; SignerRoot the root it chains to
	// ("" when it does not chain).
	Signer, SignerRoot string
	// Roots are the distinct roots of root-cert.pem, sorted.
	Roots []string
}

// holdingOf reads b's fingerprints.
func holdingOf(b *bundle.Bundle, p *bundle.Parsed, signerRoot string) holding {
	roots := uniqueFPs(p.Roots)
	slices.Sort(roots)
	return holding{Signer: pki.Fingerprint(p.Signer), SignerRoot: signerRoot, Roots: roots}
}

// target is the CA a run rotates a cluster to.
type target struct {
	// Root is the fingerprint of the new root; "" when the run names none
	// (status, rollback).
	Root string
	// Signer is the fingerprint of the new intermediate; "" when meshca is
	// to issue a new one under Root.
	Signer string
}

// needsRotation says whether a run for t must start a new rotation from
// what cacerts holds (h), and why, in a sentence for the plan and the state
// event. A completed rotation is history: a different root OR a different
// signer starts a new one.
func needsRotation(h holding, t target) (bool, string) {
	if t.Root == "" {
		return false, "no new CA given"
	}
	switch {
	case t.Signer != "" && t.Signer != h.Signer:
		return true, fmt.Sprintf("cacerts signs with intermediate %.12s; the wanted intermediate is %.12s", h.Signer, t.Signer)
	case t.Signer == "" && h.SignerRoot != t.Root:
		return true, fmt.Sprintf("cacerts signs under root %.12s; the wanted root is %.12s", h.SignerRoot, t.Root)
	case !slices.Equal(h.Roots, []string{t.Root}):
		return true, fmt.Sprintf("cacerts trusts roots %v; the wanted root %.12s alone", shortFPs(h.Roots), t.Root)
	}
	return false, fmt.Sprintf("cacerts already signs with intermediate %.12s under root %.12s and trusts only that root", h.Signer, t.Root)
}

// inProgress reports whether r records a rotation that is neither rolled
// back nor complete for cacerts in phase p.
func inProgress(r *Record, p Phase) bool {
	return r != nil && r.RolledBack == nil && p != PhaseComplete
}

// IntermediateOnly reports whether the rotation keeps the root: the new
// intermediate chains to the only root cacerts trusted. Its trust and
// retire phases have nothing to do; only the issue phase runs.
func (r *Record) IntermediateOnly() bool {
	return len(r.OldRoots) == 1 && r.OldRoots[0] == r.NewRoot
}

// derive tells the phase cacerts (holding h) is in, given the record.
func derive(h holding, r *Record) (Phase, error) {
	hasNew := slices.Contains(h.Roots, r.NewRoot)
	hasOld := false
	for _, o := range r.OldRoots {
		if o != r.NewRoot && slices.Contains(h.Roots, o) {
			hasOld = true
		}
	}
	switch {
	case r.IntermediateOnly() && h.Signer == r.OldSigner && hasNew:
		return PhaseTrust, nil
	case r.IntermediateOnly() && h.Signer == r.NewSigner && hasNew:
		if r.proven(PhaseIssue) {
			return PhaseComplete, nil
		}
		return PhaseIssue, nil
	case h.Signer == r.OldSigner && !hasNew:
		return PhaseNone, nil
	case h.Signer == r.OldSigner && hasNew:
		return PhaseTrust, nil
	case h.Signer == r.NewSigner && hasNew && hasOld:
		return PhaseIssue, nil
	case h.Signer == r.NewSigner && hasNew && !hasOld:
		if r.proven(PhaseRetire) {
			return PhaseComplete, nil
		}
		return PhaseRetire, nil
	}
	return "", fmt.Errorf("%w: cacerts holds signer %.12s and roots %v, which match no phase of the rotation recorded in configmap %s (old signer %.12s, new signer %.12s, new root %.12s); nothing was changed — restore it, or roll back with meshca rollback",
		ErrConcurrentEdit, h.Signer, shortFPs(h.Roots), RecordName, r.OldSigner, r.NewSigner, r.NewRoot)
}

// phaseWork reports whether phase p has anything to write or prove in the
// rotation r: an intermediate-only rotation has only its issue phase.
func phaseWork(r *Record, p Phase) bool {
	return !r.IntermediateOnly() || p == PhaseIssue
}

// expectation of the fleet once phase p is in place.
func expectation(r *Record, p Phase, rootPEM []byte) verify.Expectation {
	var roots []string
	signer := r.NewSigner
	switch p {
	case PhaseNone:
		roots, signer = r.OldRoots, r.OldSigner
	case PhaseTrust:
		roots, signer = append(slices.Clone(r.OldRoots), r.NewRoot), r.OldSigner
	case PhaseIssue:
		roots = append(slices.Clone(r.OldRoots), r.NewRoot)
	default:
		roots = []string{r.NewRoot}
	}
	roots = slices.Clone(roots)
	slices.Sort(roots)
	exp := verify.Expectation{Source: "rotation phase " + string(p), Roots: slices.Compact(roots), Signer: signer}
	if rootPEM != nil {
		sum := sha256.Sum256(rootPEM)
		exp.RootCertSHA256 = hex.EncodeToString(sum[:])
	}
	return exp
}

// nextAction says, for status, what `meshca rotate` would do next.
func nextAction(p Phase, r *Record) string {
	switch {
	case r == nil || p == PhaseRolledBack:
		return "nothing in progress: meshca rotate --root DIR starts a rotation"
	case p == PhaseComplete:
		return "nothing: the rotation is complete; meshca rotate with another root or intermediate starts a new one"
	case r.IntermediateOnly() && p == PhaseTrust:
		return "write the issue bundle (new intermediate under the same root), prove every leaf comes from it"
	case r.IntermediateOnly() && p == PhaseIssue:
		return "finish phase issue: prove every leaf comes from the new intermediate"
	case p == PhaseNone:
		return "write the trust bundle (old signer, old + new roots), restart ztunnel where needed, prove both roots everywhere"
	case p == PhaseTrust && !r.proven(PhaseTrust):
		return "finish phase trust: prove both roots on every proxy (restart ztunnel if needed)"
	case p == PhaseTrust:
		return "write the issue bundle (new signer), prove every leaf comes from the new intermediate"
	case p == PhaseIssue && !r.proven(PhaseIssue):
		return "finish phase issue: prove every leaf comes from the new intermediate"
	case p == PhaseIssue:
		return "write the retire bundle (new root only), once no proxy holds a certificate from the old CA"
	case p == PhaseRetire:
		return "finish phase retire: prove every proxy trusts only the new root"
	}
	return "nothing: the rotation is complete"
}
