package verify

import (
	"crypto/x509"
	"time"
)

// DefaultWarnDays is `meshca verify --warn-days`: a root or intermediate a
// proxy holds that expires within this many days makes it "expiring". It is
// the threshold of the intermediate alert of deploy/prometheus, so verify and
// the alerts agree.
const DefaultWarnDays = 30

// RefreshMargin is how much of a leaf's lifetime, past its half-life, a
// proxy is given to replace it before it is called not refreshing. ztunnel
// and istio-agent renew a workload certificate at half its lifetime (facts
// §3, istio#48120; the agent's SECRET_GRACE_PERIOD_RATIO 0.5 with 1%
// jitter), so a leaf older than 60% of its lifetime is one the proxy failed
// to renew: the six days of expired ztunnel certificates of rossoctl#2362
// start exactly like this.
const RefreshMargin = 0.1

// Freshness is where a certificate stands in its validity period.
type Freshness string

// The freshness of a certificate. Only leafs can be not refreshing; only
// roots and intermediates are expiring (a leaf always expires within days;
// its proxy renews it).
const (
	// FreshnessOK: valid, and nothing to do.
	FreshnessOK Freshness = "ok"
	// FreshnessExpired: past NotAfter.
	FreshnessExpired Freshness = "expired"
	// FreshnessNotYetValid: before NotBefore (clock skew, or a CA issued
	// in the future).
	FreshnessNotYetValid Freshness = "not-yet-valid"
	// FreshnessNotRefreshing: a leaf past its RefreshDeadline.
	FreshnessNotRefreshing Freshness = "not-refreshing"
	// FreshnessExpiring: a root or intermediate that expires within the
	// warning window.
	FreshnessExpiring Freshness = "expiring"
)

// IstiodBackdate is how far before the moment it signs istiod dates a
// workload certificate's NotBefore, against clock skew
// (ClockSkewGracePeriod in istio's security/pkg/pki/util/generate_cert.go):
// a leaf requested for SECRET_TTL spans SECRET_TTL + 2 minutes.
const IstiodBackdate = 2 * time.Minute

// RefreshDeadline is when the proxy holding leaf c should have replaced it:
// half its lifetime plus RefreshMargin of it after it was issued. The
// lifetime counts from issuance, not from NotBefore: istio-agent schedules
// the renewal from when it received the certificate (its rotateTime), and
// istiod backdates NotBefore by IstiodBackdate, which with a short
// SECRET_TTL would move the deadline before the proxy's renewal (a 2-minute
// leaf: 24 s after issuance instead of 72 s). A leaf spanning at least
// twice IstiodBackdate is taken to be backdated; a CA that does not
// backdate gets that much more time, never less.
func RefreshDeadline(c *x509.Certificate) time.Time {
	issued := c.NotBefore
	if c.NotAfter.Sub(c.NotBefore) >= 2*IstiodBackdate {
		issued = issued.Add(IstiodBackdate)
	}
	ttl := c.NotAfter.Sub(issued)
	return issued.Add(time.Duration(float64(ttl) * (0.5 + RefreshMargin)))
}

// FreshnessOf classifies certificate c at now. A leaf is checked against its
// RefreshDeadline; a root or intermediate against warn (no warning when warn
// is 0).
func FreshnessOf(c *x509.Certificate, leaf bool, now time.Time, warn time.Duration) Freshness {
	switch {
	case now.After(c.NotAfter):
		return FreshnessExpired
	case now.Before(c.NotBefore):
		return FreshnessNotYetValid
	case leaf && now.After(RefreshDeadline(c)):
		return FreshnessNotRefreshing
	case !leaf && warn > 0 && c.NotAfter.Sub(now) <= warn:
		return FreshnessExpiring
	}
	return FreshnessOK
}

// warnWindow is the expiry warning window of exp.
func (exp *Expectation) warnWindow() time.Duration {
	return time.Duration(exp.WarnDays) * 24 * time.Hour
}
