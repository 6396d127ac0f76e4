// Package verify owns fleet verification: does every proxy of the mesh hold
// what the CA says it should? It holds the pure checks of one proxy's dump
// (read by internal/proxy) against an Expectation — the set of roots to
// trust, and optionally the intermediate that must have signed every
// workload leaf — and the bounded-parallel walk over the fleet that
// internal/mesh discovered, which collects a Report: counts per kind of
// proxy, the proxies that do not match with their problems, and the
// istio-ca-root-cert ConfigMaps.
//
// Trust is compared as a set of SHA-256 fingerprints: ztunnel does not
// de-duplicate roots, so repeats are reported, never failed (facts §3). A
// ztunnel that holds no certificate (no ambient workload on its node) has
// nothing to verify: it is reported apart and never counted as a match
// (facts §3).
//
// The Report's JSON form is a stable schema (apiVersion meshca.io/v1alpha1,
// kind FleetVerification) consumed by the rotation engine and the Prometheus
// exporter; see Report.
package verify

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/proxy"
)

// Status is the verdict on one proxy.
type Status string

// The statuses of a proxy. Only StatusMatch passes; StatusNothingToVerify
// neither passes nor fails (see Report.OK).
const (
	// StatusMatch: it trusts exactly the expected roots and every leaf it
	// holds was signed by the expected signer.
	StatusMatch Status = "match"
	// StatusStale: it holds something else (a missing or extra root, a
	// leaf from another signer, an identity without a certificate, an
	// expired or not yet valid root or intermediate, a leaf not yet valid).
	StatusStale Status = "stale"
	// StatusNotRefreshing: a leaf it holds is past its refresh point
	// (RefreshDeadline) or expired: the proxy has stopped renewing its
	// certificates (and nothing worse is wrong with it).
	StatusNotRefreshing Status = "not-refreshing"
	// StatusExpiring: a root or intermediate it holds expires within the
	// expectation's WarnDays (and nothing worse is wrong with it).
	StatusExpiring Status = "expiring"
	// StatusNothingToVerify: a ztunnel holding no certificate at all (no
	// ambient workload on its node). Never counted as a match.
	StatusNothingToVerify Status = "nothing-to-verify"
	// StatusUnreadable: its admin API could not be read or parsed.
	StatusUnreadable Status = "unreadable"
	// StatusNotReady: the pod is not running, so it was not read.
	StatusNotReady Status = "not-ready"
)

// Statuses lists every Status in report order.
var Statuses = []Status{StatusMatch, StatusStale, StatusNotRefreshing, StatusExpiring, StatusNothingToVerify, StatusUnreadable, StatusNotReady}

// Failing reports whether a proxy with this status fails verification:
// every status but match and nothing-to-verify.
func (s Status) Failing() bool {
	return s != StatusMatch && s != StatusNothingToVerify
}

// Expectation is what every proxy should hold.
type Expectation struct {
	// Source says where the expectation came from ("secret
	// istio-system/cacerts", "flags").
	Source string `json:"source"`
	// Roots are the fingerprints (SHA-256 of DER, lowercase hex) of the
	// roots every proxy must trust, sorted, distinct.
	Roots []string `json:"roots"`
	// Signer is the fingerprint of the certificate that must have signed
	// every workload leaf; empty: not checked.
	Signer string `json:"signer,omitempty"`
	// AllowExtraRoots accepts proxies that trust more roots than Roots
	// (missing ones still fail).
	AllowExtraRoots bool `json:"allowExtraRoots"`
	// RootCertSHA256 is the SHA-256 of the exact root-cert.pem bytes, when
	// known: the istio-ca-root-cert ConfigMaps must carry these bytes.
	RootCertSHA256 string `json:"rootCertSHA256,omitempty"`
	// WarnDays makes a proxy that holds a root or intermediate expiring
	// within this many days "expiring"; 0 disables the warning. Expired,
	// not yet valid and not refreshed certificates are always checked.
	WarnDays int `json:"warnDays,omitempty"`
}

// ExpectationFromCA is the expectation of istiod's current CA: the set of
// roots of root-cert.pem and ca-cert.pem as the signer.
func ExpectationFromCA(ca *mesh.CA) Expectation {
	return Expectation{
		Source:         ca.Source(),
		Roots:          ca.Trust().Roots,
		Signer:         ca.SignerFingerprint(),
		RootCertSHA256: ca.RootPEMSHA256(),
	}
}

// NewExpectation builds an expectation from fingerprints as users type them
// (see ParseFingerprint); signer may be empty.
func NewExpectation(source string, roots []string, signer string) (Expectation, error) {
	exp := Expectation{Source: source}
	var errs []error
	for _, r := range roots {
		fp, err := ParseFingerprint(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("root %w", err))
			continue
		}
		exp.Roots = append(exp.Roots, fp)
	}
	if signer != "" {
		fp, err := ParseFingerprint(signer)
		if err != nil {
			errs = append(errs, fmt.Errorf("signer %w", err))
		}
		exp.Signer = fp
	}
	if err := errors.Join(errs...); err != nil {
		return Expectation{}, err
	}
	exp.Roots = proxy.NewTrust(exp.Roots...).Roots
	return exp, nil
}

// ParseFingerprint accepts a SHA-256 fingerprint as meshca prints it (64
// lowercase hex digits) or as openssl prints it (uppercase, colon
// separated, optionally prefixed "SHA256 Fingerprint=") and returns meshca's
// form.
func ParseFingerprint(s string) (string, error) {
	t := strings.TrimSpace(s)
	if i := strings.LastIndex(t, "="); i >= 0 {
		t = t[i+1:]
	}
	t = strings.ToLower(strings.ReplaceAll(t, ":", ""))
	if b, err := hex.DecodeString(t); err != nil || len(b) != 32 {
		return "", fmt.Errorf("fingerprint %q: want the SHA-256 of the certificate's DER in hex, 64 digits (as `meshca ca inspect -o json` prints it)", s)
	}
	return t, nil
}

// Result is the verdict on one proxy.
type Result struct {
	// Kind of proxy.
	Kind mesh.Kind `json:"kind"`
	// Namespace and Name of the pod.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Node the pod runs on.
	Node string `json:"node,omitempty"`
	// Owner is the workload that restarts the pod.
	Owner *mesh.Owner `json:"owner,omitempty"`
	// Status is the verdict.
	Status Status `json:"status"`
	// Reason classifies an unreadable proxy (kube.Reason: PortForward,
	// Timeout, HTTPStatus, ... or Unparsable).
	Reason string `json:"reason,omitempty"`
	// Identities is how many identities the proxy holds or requests a
	// certificate for (ztunnel: one per workload identity on its node;
	// envoy: one).
	Identities int `json:"identities"`
	// Roots are the distinct roots it trusts, over all its identities.
	Roots []string `json:"roots"`
	// DuplicateRoots are the roots listed more than once for some identity
	// (reported, never failed).
	DuplicateRoots []string `json:"duplicateRoots,omitempty"`
	// Signers are the distinct fingerprints of the certificates that signed
	// its leafs.
	Signers []string `json:"signers"`
	// Leafs are the workload certificates it holds, one per identity that
	// has one, in dump order: what the exporter publishes as
	// meshca_proxy_cert_not_after_seconds.
	Leafs []Leaf `json:"leafs,omitempty"`
	// Problems say why it is not a match, one sentence each.
	Problems []string `json:"problems,omitempty"`
	// Notes are what is worth knowing but does not fail it.
	Notes []string `json:"notes,omitempty"`
}

// Leaf is the validity of one workload certificate a proxy holds.
type Leaf struct {
	// Identity is the SPIFFE identity it was issued for.
	Identity string `json:"identity"`
	// NotBefore and NotAfter bound its validity.
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// Freshness is where it stands at the time of the check (ok, expired,
	// not-yet-valid, not-refreshing).
	Freshness Freshness `json:"freshness"`
}

// String names the proxy as kind namespace/name.
func (r *Result) String() string { return string(r.Kind) + " " + r.Namespace + "/" + r.Name }

// newResult starts the result of p.
func newResult(p *mesh.Proxy) Result {
	r := Result{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, Node: p.Node}
	if p.Owner.Kind != "" {
		o := p.Owner
		r.Owner = &o
	}
	return r
}

func short(fp string) string {
	if len(fp) > 12 {
		return fp[:12]
	}
	return fp
}

// sortedSet sorts and de-duplicates.
func sortedSet(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}
