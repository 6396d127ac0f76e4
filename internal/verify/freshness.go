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

// RefreshDeadline is when the proxy holding leaf c should have replaced it:
// half its lifetime plus RefreshMargin of it after NotBefore.
func RefreshDeadline(c *x509.Certificate) time.Time {
	life := c.NotAfter.Sub(c.NotBefore)
	return c.NotBefore.Add(time.Duration(float64(life) * (0.5 + RefreshMargin)))
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
