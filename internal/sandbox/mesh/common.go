package mesh

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// Retry defaults of a failed CSR: exponential backoff from
// DefaultRetryBackoff up to DefaultMaxRetryBackoff.
const (
	DefaultRetryBackoff    = time.Second
	DefaultMaxRetryBackoff = 15 * time.Second
)

// minDelay keeps a proxy from spinning when a certificate's half-life has
// already passed (a backdated or nearly expired certificate).
const minDelay = 100 * time.Millisecond

// common holds the settings shared by Ztunnel and Agent.
type common struct {
	ca       CAClient
	ttl      time.Duration
	now      func() time.Time
	backoff  time.Duration
	maxRetry time.Duration
	log      *slog.Logger
	// onIssuance is told of every failed CSR; nil when nobody listens.
	onIssuance IssuanceFunc
}

// IssuanceFunc is told of a proxy's failed CSR: the proxy ("ztunnel/node-1",
// "waypoint/ns/pod"), the identity and the error.
type IssuanceFunc func(proxy, identity string, err error)

func (c *common) issuanceFailed(proxy, identity string, err error) {
	if c.onIssuance != nil {
		c.onIssuance(proxy, identity, err)
	}
}

func newCommon(ca CAClient, ttl time.Duration, now func() time.Time, backoff, maxBackoff time.Duration, log *slog.Logger) common {
	if ttl <= 0 {
		ttl = DefaultSecretTTL
	}
	if now == nil {
		now = time.Now
	}
	if backoff <= 0 {
		backoff = DefaultRetryBackoff
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxRetryBackoff
	}
	if maxBackoff < backoff {
		maxBackoff = backoff
	}
	if log == nil {
		log = slog.Default()
	}
	return common{ca: ca, ttl: ttl, now: now, backoff: backoff, maxRetry: maxBackoff, log: log}
}

func (c *common) nextBackoff(d time.Duration) time.Duration {
	return min(2*d, c.maxRetry)
}

// refreshDelay is how long to wait before renewing leaf: until half its
// lifetime, as ztunnel and istio-agent do (facts §3, §4). When that moment has
// passed already, half of what remains.
func refreshDelay(leaf *x509.Certificate, now time.Time) time.Duration {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	d := leaf.NotBefore.Add(life / 2).Sub(now)
	if d <= 0 {
		d = leaf.NotAfter.Sub(now) / 2
	}
	return max(d, minDelay)
}

// sleepCtx waits for d or until ctx is done; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-wake:
		return true
	}
}

// parseTrust parses the roots a proxy trusts istiod with: the
// istio-ca-root-cert ConfigMap's root-cert.pem.
func parseTrust(name string, data []byte) ([]*x509.Certificate, error) {
	roots, err := pki.ParseCertificates(name, data)
	if err != nil {
		return nil, fmt.Errorf("trust in istiod: %w", err)
	}
	return roots, nil
}

// uniqueSortedByPEM de-duplicates certs and sorts them by PEM text, as
// istio-agent builds ROOTCA (facts §4).
func uniqueSortedByPEM(certs []*x509.Certificate) []*x509.Certificate {
	u, _ := pki.Unique(certs)
	sort.SliceStable(u, func(i, j int) bool {
		return string(pki.EncodeCert(u[i])) < string(pki.EncodeCert(u[j]))
	})
	return u
}

// b64PEM is base64 of the PEM text of certs, as ztunnel's "pem" and envoy's
// inline_bytes carry them.
func b64PEM(certs ...*x509.Certificate) string {
	return base64.StdEncoding.EncodeToString(pki.EncodeCerts(certs...))
}

// rfc3339 formats t as ztunnel does: seconds, UTC, "Z".
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// protoTimestamp formats t as protobuf JSON renders envoy's last_updated.
func protoTimestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func b64Bytes(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
