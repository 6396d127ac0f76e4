package verify

import (
	"fmt"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/proxy"
)

// Admin API paths read from each kind of proxy on kube.AdminPort.
const (
	// ZtunnelPath is ztunnel's config dump; its "certificates" array is
	// what is read (facts §3).
	ZtunnelPath = "/config_dump"
	// EnvoyPath is envoy's dump masked to the SDS secrets (facts §4).
	EnvoyPath = "/config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets"
)

// DumpPath is the admin path read from a proxy of kind k.
func DumpPath(k mesh.Kind) string {
	if k == mesh.KindZtunnel {
		return ZtunnelPath
	}
	return EnvoyPath
}

// ReasonUnparsable is the Reason of a proxy whose dump could not be parsed.
const ReasonUnparsable = "Unparsable"

// Check verifies the dump read from proxy p (ztunnel's /config_dump or
// envoy's secrets dump, by p.Kind) against exp at time now. A dump that does
// not parse makes the proxy unreadable.
func Check(p *mesh.Proxy, dump []byte, exp Expectation, now time.Time) Result {
	var r Result
	if p.Kind == mesh.KindZtunnel {
		z, err := proxy.ReadZtunnel(dump)
		if err != nil {
			return unreadable(p, ReasonUnparsable, err)
		}
		r = CheckZtunnel(z, exp, now)
	} else {
		e, err := proxy.ReadEnvoy(dump)
		if err != nil {
			return unreadable(p, ReasonUnparsable, err)
		}
		r = CheckEnvoy(e, exp, now)
		if r.Status == StatusStale && !p.XDSAgent {
			r.Notes = append(r.Notes, mesh.EnvXDSAgent+" is not set on this pod: it gets new roots only when it re-signs (about 12h) or restarts")
		}
	}
	meta := newResult(p)
	meta.Status, meta.Identities, meta.Roots, meta.DuplicateRoots, meta.Signers, meta.Leafs, meta.Problems, meta.Notes =
		r.Status, r.Identities, r.Roots, r.DuplicateRoots, r.Signers, r.Leafs, r.Problems, r.Notes
	return meta
}

// unreadable is the result of a proxy that could not be read.
func unreadable(p *mesh.Proxy, reason string, err error) Result {
	r := newResult(p)
	r.Status, r.Reason = StatusUnreadable, reason
	r.Problems = []string{err.Error()}
	r.normalize()
	return r
}

// notReady is the result of a proxy that was not read.
func notReady(p *mesh.Proxy) Result {
	r := newResult(p)
	r.Status = StatusNotReady
	why := p.NotReady
	if why == "" {
		why = "not running"
	}
	r.Problems = []string{"pod " + why + ": not read"}
	r.normalize()
	return r
}

// CheckZtunnel verifies a ztunnel: every identity must be Available with a
// leaf from the expected signer that chains to a trusted root, and must
// trust exactly the expected roots. Problems shared by many identities are
// reported once. A ztunnel holding no identity has nothing to verify.
func CheckZtunnel(z *proxy.Ztunnel, exp Expectation, now time.Time) Result {
	c := newChecker(exp, now)
	for i := range z.Identities {
		id := &z.Identities[i]
		if !strings.HasPrefix(id.State, "Available") {
			c.identityState(id)
		}
		if !id.HasCert() {
			if id.State == "Available" {
				c.add(aboutIdentity, id.Name, "is Available but holds no certificate", "are Available but hold no certificate")
			}
			continue
		}
		c.identity(id)
	}
	r := c.result(len(z.Identities))
	if z.Legacy() {
		r.Notes = append(r.Notes, "ztunnel before 1.26 (no rootCerts): it trusts a single root, the last certChain entry; upgrade it before rotating the CA")
	}
	if z.Empty() {
		r.Status = StatusNothingToVerify
		r.Notes = append(r.Notes, "no certificates: no ambient workload on its node")
	}
	return r
}

// CheckEnvoy verifies an envoy proxy (sidecar, gateway, waypoint): its
// active default secret must hold a leaf from the expected signer that
// chains to a trusted root, and its active ROOTCA must hold exactly the
// expected roots (every PEM block counts, facts §4).
func CheckEnvoy(e *proxy.Envoy, exp Expectation, now time.Time) Result {
	c := newChecker(exp, now)
	id := e.Workload()
	identities := 1
	if e.Secret(proxy.SecretRootCA, proxy.StatusActive) == nil {
		c.add(aboutProxy, "", "trusts no root: no active ROOTCA secret")
	}
	switch {
	case id.HasCert():
		c.identity(&id)
	case id.State == proxy.StatusWarming:
		c.add(aboutProxy, "", "no workload certificate yet: the default secret is still warming")
		c.trust(&id)
	default:
		identities = 0
		c.add(aboutProxy, "", "no workload certificate: no active default secret")
		c.trust(&id)
	}
	return c.result(identities)
}

// subject says what a finding is about, which decides how findings shared
// by several identities are worded.
type subject int

const (
	// aboutProxy: the proxy as a whole ("no workload certificate").
	aboutProxy subject = iota
	// aboutIdentity: "identity Z Unavailable: ..."
	aboutIdentity
	// aboutLeaf: "leaf of identity Z signed by ..."
	aboutLeaf
	// aboutTrust: "missing root X" (for some identities only: "... for
	// identity Z").
	aboutTrust
)

type finding struct {
	about subject
	// status is what the finding makes the proxy: stale, not refreshing
	// or expiring (the worst finding decides).
	status Status
	// message is about one identity; plural, when set, about several.
	message, plural string
	identities      []string
}

// severity orders the statuses a finding can give: the worst one is the
// proxy's status.
func severity(s Status) int {
	switch s {
	case StatusStale:
		return 3
	case StatusNotRefreshing:
		return 2
	case StatusExpiring:
		return 1
	}
	return 0
}

// checker collects the findings of one proxy, in order, grouped by message.
type checker struct {
	exp         Expectation
	want        proxy.Trust
	now         time.Time
	findings    []*finding
	byKey       map[string]*finding
	roots       []string
	duplicates  []string
	signers     []string
	trustChecks int
	leafs       []Leaf
	// caChecked holds the roots and intermediates whose validity was
	// checked, so that one shared by every identity is reported once.
	caChecked map[string]bool
}

func newChecker(exp Expectation, now time.Time) *checker {
	return &checker{exp: exp, want: proxy.NewTrust(exp.Roots...), now: now, byKey: map[string]*finding{}, caChecked: map[string]bool{}}
}

// add records a finding about identity ("" for the proxy). plural, if
// given, is the message's wording for several identities.
func (c *checker) add(about subject, identity, message string, plural ...string) {
	c.addAs(StatusStale, about, identity, message, plural...)
}

// addAs is add for a finding that gives the proxy status s.
func (c *checker) addAs(s Status, about subject, identity, message string, plural ...string) {
	key := fmt.Sprint(about, message)
	f := c.byKey[key]
	if f == nil {
		f = &finding{about: about, status: s, message: message, plural: message}
		if len(plural) > 0 {
			f.plural = plural[0]
		}
		c.byKey[key] = f
		c.findings = append(c.findings, f)
	}
	if identity != "" {
		f.identities = append(f.identities, identity)
	}
}

// identityState reports an identity that is not Available.
func (c *checker) identityState(id *proxy.Identity) {
	switch {
	case strings.HasPrefix(id.State, "Unavailable"):
		c.add(aboutIdentity, id.Name, id.State)
	case id.State == "Initializing":
		c.add(aboutIdentity, id.Name, "Initializing: no certificate yet")
	default:
		c.add(aboutIdentity, id.Name, "in state "+id.State)
	}
}

// identity checks an identity that holds a certificate.
func (c *checker) identity(id *proxy.Identity) {
	c.trust(id)
	c.freshness(id)
	leaf := id.Leaf()
	signer := id.Signer()
	if signer == nil {
		c.add(aboutLeaf, id.Name, fmt.Sprintf("has no signer in its chain (issuer %s)", pki.IssuerString(leaf.X509)),
			fmt.Sprintf("have no signer in their chain (issuer %s)", pki.IssuerString(leaf.X509)))
	} else {
		c.signers = append(c.signers, signer.Fingerprint)
		if c.exp.Signer != "" && signer.Fingerprint != c.exp.Signer {
			c.add(aboutLeaf, id.Name, fmt.Sprintf("signed by %s, want %s", short(signer.Fingerprint), short(c.exp.Signer)))
		}
	}
	switch anchor := id.Anchor(); {
	case anchor == nil:
		c.add(aboutLeaf, id.Name, "does not chain to any root it trusts", "do not chain to any root they trust")
	case !c.want.Has(anchor.Fingerprint):
		c.add(aboutLeaf, id.Name, fmt.Sprintf("chains to root %s, not an expected root", short(anchor.Fingerprint)),
			fmt.Sprintf("chain to root %s, not an expected root", short(anchor.Fingerprint)))
	}
}

// freshness checks the validity of an identity's leaf and of the
// intermediates of its chain (its roots are checked with its trust).
func (c *checker) freshness(id *proxy.Identity) {
	leaf := id.Leaf().X509
	fresh := FreshnessOf(leaf, true, c.now, 0)
	c.leafs = append(c.leafs, Leaf{Identity: id.Name, NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), Freshness: fresh})
	switch fresh {
	case FreshnessExpired:
		// An expired leaf is one the proxy did not renew in time.
		c.addAs(StatusNotRefreshing, aboutLeaf, id.Name, "expired at "+leaf.NotAfter.UTC().Format(time.RFC3339))
	case FreshnessNotYetValid:
		c.add(aboutLeaf, id.Name, "is not valid before "+leaf.NotBefore.UTC().Format(time.RFC3339)+": check the clocks of istiod and this node",
			"are not valid before "+leaf.NotBefore.UTC().Format(time.RFC3339)+": check the clocks of istiod and this node")
	case FreshnessNotRefreshing:
		msg := fmt.Sprintf("is past its refresh point (%d%% of its lifetime): the proxy is not renewing it", int((0.5+RefreshMargin)*100))
		c.addAs(StatusNotRefreshing, aboutLeaf, id.Name, msg,
			fmt.Sprintf("are past their refresh point (%d%% of their lifetime): the proxy is not renewing them", int((0.5+RefreshMargin)*100)))
	}
	for i := 1; i < len(id.Chain); i++ {
		c.caFreshness(&id.Chain[i])
	}
}

// caFreshness checks the validity of a root or intermediate the proxy
// holds, once per certificate.
func (c *checker) caFreshness(cert *proxy.Cert) {
	if c.caChecked[cert.Fingerprint] {
		return
	}
	c.caChecked[cert.Fingerprint] = true
	what := string(cert.Role) + " " + short(cert.Fingerprint)
	x := cert.X509
	switch FreshnessOf(x, false, c.now, c.exp.warnWindow()) {
	case FreshnessExpired:
		c.add(aboutProxy, "", what+" expired at "+x.NotAfter.UTC().Format(time.RFC3339))
	case FreshnessNotYetValid:
		c.add(aboutProxy, "", what+" is not valid before "+x.NotBefore.UTC().Format(time.RFC3339))
	case FreshnessExpiring:
		c.addAs(StatusExpiring, aboutProxy, "", fmt.Sprintf("%s expires in %s, at %s (within --warn-days %d)",
			what, daysLeft(x.NotAfter.Sub(c.now)), x.NotAfter.UTC().Format(time.RFC3339), c.exp.WarnDays))
	}
}

// daysLeft says how long remains, in whole days (hours under two days).
func daysLeft(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// trust compares the roots of an identity with the expected set.
func (c *checker) trust(id *proxy.Identity) {
	c.trustChecks++
	anchors := id.Anchors()
	for i := range anchors {
		c.caFreshness(&anchors[i])
	}
	seen := map[string]bool{}
	for _, a := range anchors {
		if seen[a.Fingerprint] {
			c.duplicates = append(c.duplicates, a.Fingerprint)
		}
		seen[a.Fingerprint] = true
		c.roots = append(c.roots, a.Fingerprint)
	}
	missing, extra := proxy.TrustOf(anchors).Diff(c.want)
	for _, fp := range missing {
		c.add(aboutTrust, id.Name, "missing root "+short(fp))
	}
	if !c.exp.AllowExtraRoots {
		for _, fp := range extra {
			c.add(aboutTrust, id.Name, "extra root "+short(fp))
		}
	}
}

// result renders the findings: a finding shared by every identity whose
// trust was checked is stated once for the proxy.
func (c *checker) result(identities int) Result {
	r := Result{
		Status:         StatusMatch,
		Identities:     identities,
		Roots:          sortedSet(c.roots),
		DuplicateRoots: sortedSet(c.duplicates),
		Signers:        sortedSet(c.signers),
		Leafs:          c.leafs,
	}
	for _, f := range c.findings {
		r.Problems = append(r.Problems, f.render(c.trustChecks))
		if severity(f.status) > severity(r.Status) {
			r.Status = f.status
		}
	}
	for _, fp := range r.DuplicateRoots {
		r.Notes = append(r.Notes, fmt.Sprintf("root %s is listed more than once (ztunnel does not de-duplicate roots; trust is compared as a set)", short(fp)))
	}
	r.normalize()
	return r
}

// maxNamed bounds how many identities a shared finding names.
const maxNamed = 3

func (f *finding) render(trustChecks int) string {
	n := len(f.identities)
	names := strings.Join(f.identities[:min(n, maxNamed)], ", ")
	if n > maxNamed {
		names += fmt.Sprintf(", and %d more", n-maxNamed)
	}
	switch f.about {
	case aboutIdentity:
		if n == 1 {
			return "identity " + names + " " + f.message
		}
		return fmt.Sprintf("%d identities %s (%s)", n, f.plural, names)
	case aboutLeaf:
		if n == 1 {
			return "leaf of identity " + names + " " + f.message
		}
		return fmt.Sprintf("leafs of %d identities %s (%s)", n, f.plural, names)
	case aboutTrust:
		if n >= trustChecks {
			return f.message
		}
		if n == 1 {
			return f.message + " for identity " + names
		}
		return fmt.Sprintf("%s for %d identities (%s)", f.message, n, names)
	}
	return f.message
}

// normalize makes the lists of a result non-nil, so that JSON shows [] for
// "none" and never null.
func (r *Result) normalize() {
	if r.Roots == nil {
		r.Roots = []string{}
	}
	if r.Signers == nil {
		r.Signers = []string{}
	}
	if len(r.DuplicateRoots) == 0 {
		r.DuplicateRoots = nil
	}
}
