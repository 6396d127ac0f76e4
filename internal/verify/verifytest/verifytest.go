// Package verifytest builds, for tests, the dumps that fleet verification
// reads — ztunnel's /config_dump certificates and envoy's secrets dump, in
// the exact formats of istio-ca-facts.md §3 and §4 — from certificates
// generated on the fly, plus the CA material of a rotation (old and new
// root and intermediate).
package verifytest

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

// Rotation is the CA material of a rotation: the old and the new root, each
// with its intermediate. Keys are ECDSA P-256 to keep tests fast.
type Rotation struct {
	OldRoot, OldInt, NewRoot, NewInt *pki.CA
}

// NewRotation generates a Rotation valid at pkitest.Now.
func NewRotation(t testing.TB) *Rotation {
	t.Helper()
	r := &Rotation{OldRoot: pkitest.Root(t, pki.ECDSAP256), NewRoot: pkitest.Root(t, pki.ECDSAP256)}
	r.OldInt = pkitest.Intermediate(t, r.OldRoot, pki.ECDSAP256, "cluster1")
	r.NewInt = pkitest.Intermediate(t, r.NewRoot, pki.ECDSAP256, "cluster1")
	return r
}

// Leaf returns a workload certificate for the SPIFFE id signed by ca, valid
// from an hour before pkitest.Now for a day, as istiod issues them.
func Leaf(t testing.TB, ca *pki.CA, id string) *x509.Certificate {
	t.Helper()
	return pkitest.Leaf(t, ca, id, pkitest.Now.Add(-time.Hour), 24*time.Hour).Cert
}

// Certs returns the certificates of CAs.
func Certs(cas ...*pki.CA) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cas))
	for i, ca := range cas {
		out[i] = ca.Cert
	}
	return out
}

// ZtunnelIdentity is one entry of ztunnel's certificates array.
type ZtunnelIdentity struct {
	// Name is the SPIFFE identity.
	Name string
	// State is "Available", "Initializing" or "Unavailable: <reason>"
	// ("Available" when empty).
	State string
	// Chain is certChain, leaf first; Roots is rootCerts.
	Chain, Roots []*x509.Certificate
	// Legacy omits rootCerts and writes raw PEM (ztunnel before 1.22/1.26).
	Legacy bool
}

// ZtunnelDump is a ztunnel /config_dump holding the identities (with the
// other top-level keys a real dump has).
func ZtunnelDump(ids ...ZtunnelIdentity) []byte {
	certs := make([]any, 0, len(ids))
	for _, id := range ids {
		state := id.State
		if state == "" {
			state = "Available"
		}
		e := map[string]any{"identity": id.Name, "state": state, "certChain": ztunnelCerts(id.Legacy, id.Chain)}
		if !id.Legacy {
			e["rootCerts"] = ztunnelCerts(false, id.Roots)
		}
		certs = append(certs, e)
	}
	return mustJSON(map[string]any{
		"workloads":    []any{},
		"services":     []any{},
		"policies":     []any{},
		"config":       map[string]any{"caAddress": "https://istiod.istio-system.svc:15012", "clusterId": "Kubernetes"},
		"certificates": certs,
	})
}

func ztunnelCerts(legacy bool, certs []*x509.Certificate) []any {
	out := make([]any, 0, len(certs))
	for _, c := range certs {
		p := string(pki.EncodeCert(c))
		if !legacy {
			p = base64.StdEncoding.EncodeToString([]byte(p))
		}
		out = append(out, map[string]any{
			"pem":            p,
			"serialNumber":   c.SerialNumber.String(),
			"validFrom":      c.NotBefore.UTC().Format(time.RFC3339),
			"expirationTime": c.NotAfter.UTC().Format(time.RFC3339),
		})
	}
	return out
}

// EnvoyDump is envoy's SecretsConfigDump (snake_case, as the admin API
// serves it) with an active default secret holding chain (none when chain
// is empty) and an active ROOTCA holding roots (none when roots is nil).
func EnvoyDump(chain, roots []*x509.Certificate) []byte {
	var active []any
	if len(chain) > 0 {
		active = append(active, map[string]any{
			"name": "default", "version_info": "2026-11-01T11:00:00Z/1", "last_updated": "2026-11-01T11:00:00.000Z",
			"secret": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "default",
				"tls_certificate": map[string]any{
					"certificate_chain": map[string]any{"inline_bytes": b64(chain...)},
					"private_key":       map[string]any{"inline_bytes": "W3JlZGFjdGVkXQ=="},
				},
			},
		})
	}
	if roots != nil {
		active = append(active, map[string]any{
			"name": "ROOTCA", "version_info": "2026-11-01T11:00:00Z/1", "last_updated": "2026-11-01T11:00:00.000Z",
			"secret": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "ROOTCA",
				"validation_context": map[string]any{"trusted_ca": map[string]any{"inline_bytes": b64(roots...)}},
			},
		})
	}
	return mustJSON(map[string]any{
		"@type":                  "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
		"dynamic_active_secrets": active,
	})
}

// EnvoyWarmingDump is envoy's secrets dump of a proxy whose default secret
// is still warming, with an active ROOTCA holding roots.
func EnvoyWarmingDump(roots []*x509.Certificate) []byte {
	d := map[string]any{}
	if err := json.Unmarshal(EnvoyDump(nil, roots), &d); err != nil {
		panic(err)
	}
	d["dynamic_warming_secrets"] = []any{map[string]any{
		"name": "default", "version_info": "uninitialized", "last_updated": "2026-11-01T11:00:00.000Z",
		"secret": map[string]any{"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "default"},
	}}
	return mustJSON(d)
}

func b64(certs ...*x509.Certificate) string {
	return base64.StdEncoding.EncodeToString(pki.EncodeCerts(certs...))
}

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return data
}
