package proxy

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var regenerate = flag.Bool("fixtures", false, "regenerate testdata/fixtures/*.json from fresh certificates (then run -update)")

// TestFixtures writes the dumps under testdata/fixtures that the golden tests
// read. Certificates vary with every generation, so the fixtures are checked
// in and only rewritten on request: go test -run TestFixtures -fixtures.
// Every certificate is valid from a year before the test clock for decades.
func TestFixtures(t *testing.T) {
	if !*regenerate {
		t.Skip("run with -fixtures to regenerate testdata/fixtures")
	}
	p := newRotationPKI(t)
	leafB := p.oldInt.leaf(t, idB)
	leafC := p.newInt.leaf(t, "spiffe://cluster.local/ns/ambient/sa/c")
	gateway := newRoot(t)
	gwCert := gateway.leaf(t, "spiffe://example.com/gateway")

	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join("testdata", "fixtures", name), append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Phase 2 of a rotation on one node: identity a re-issued under the new
	// intermediate (the root copied from cert-chain.pem into the chain, roots
	// old + new + new), b still under the old one, c unavailable, d starting.
	write("ztunnel-rotation.json", mustJSON(t, map[string]any{
		"workloads": []any{},
		"services":  []any{},
		"config":    map[string]any{"caAddress": "https://istiod.istio-system.svc:15012", "clusterId": "Kubernetes"},
		"certificates": []any{
			map[string]any{"identity": idA, "state": "Available",
				"certChain": ztCerts(false, p.newLeaf, p.newInt.cert, p.newRoot.cert),
				"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)},
			map[string]any{"identity": idB, "state": "Available",
				"certChain": ztCerts(false, leafB, p.oldInt.cert, p.oldRoot.cert),
				"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert)},
			map[string]any{"identity": "spiffe://cluster.local/ns/ambient/sa/c", "state": "Unavailable: signing gRPC error (The service is currently unavailable)",
				"certChain": []any{}, "rootCerts": []any{}},
			map[string]any{"identity": "spiffe://cluster.local/ns/ambient/sa/d", "state": "Initializing",
				"certChain": []any{}, "rootCerts": []any{}},
		},
	}))

	// ztunnel before 1.22/1.26: raw PEM, no rootCerts; the root is the last
	// chain entry. Identity a also carries the root copied from
	// cert-chain.pem, which istioctl labels Intermediate.
	write("ztunnel-legacy.json", mustJSON(t, []any{
		map[string]any{"identity": idA, "state": "Available",
			"certChain": ztCerts(true, p.oldLeaf, p.oldInt.cert, p.oldRoot.cert, p.oldRoot.cert)},
		map[string]any{"identity": idB, "state": "Available",
			"certChain": ztCerts(true, leafB, p.oldInt.cert, p.oldRoot.cert)},
		map[string]any{"identity": "spiffe://cluster.local/ns/ambient/sa/d", "state": "Initializing", "certChain": []any{}},
	}))

	// istioctl pc secret -o json of a sidecar in phase 2: new leaf, ROOTCA
	// with both roots, camelCase.
	write("envoy-rotation-camel.json", camelJSON(t, map[string]any{
		"dynamic_active_secrets": []any{
			envoyTLSSecret("default", leafC, p.newInt.cert, p.newRoot.cert),
			envoyCASecret("ROOTCA", p.newRoot.cert, p.oldRoot.cert),
		},
	}))

	// A gateway's whole config_dump (snake_case): its credential, a warming
	// credential that never arrived, the mesh secrets of phase 1.
	write("envoy-configdump.json", mustJSON(t, map[string]any{
		"configs": []any{
			map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
				"bootstrap": map[string]any{"node": map[string]any{"id": "router~10.0.0.7~ingress-7d9.istio-system~istio-system.svc.cluster.local"}}},
			map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "version_info": "2026-05-31T12:00:00Z/7"},
			map[string]any{
				"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
				"dynamic_active_secrets": []any{
					envoyTLSSecret("default", leafB, p.oldInt.cert, p.oldRoot.cert),
					envoyCASecret("ROOTCA", p.oldRoot.cert, p.newRoot.cert),
					envoyTLSSecret("kubernetes://ingress-cred", gwCert),
				},
				"dynamic_warming_secrets": []any{
					map[string]any{"name": "kubernetes://missing-cred", "version_info": "uninitialized", "last_updated": "2026-05-31T12:00:00.000Z",
						"secret": map[string]any{"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "kubernetes://missing-cred"}},
				},
			},
		},
	}))

	// Trust domain federation: ROOTCA as a SPIFFE validator with one bundle
	// per trust domain.
	spiffe := envoyCASecret("ROOTCA")
	spiffe["secret"].(map[string]any)["validation_context"] = map[string]any{
		"trusted_ca": map[string]any{},
		"custom_validator_config": map[string]any{
			"name": "envoy.tls.cert_validator.spiffe",
			"typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
				"trust_domains": []any{
					map[string]any{"name": "cluster.local", "trust_bundle": map[string]any{"inline_bytes": b64(pemText(p.oldRoot.cert))}},
					map[string]any{"name": "example.com", "trust_bundle": map[string]any{"inline_bytes": b64(pemText(gateway.cert))}},
				},
			},
		},
	}
	write("envoy-spiffe.json", mustJSON(t, map[string]any{
		"@type":                  "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
		"dynamic_active_secrets": []any{envoyTLSSecret("default", leafB, p.oldInt.cert), spiffe},
	}))
}
