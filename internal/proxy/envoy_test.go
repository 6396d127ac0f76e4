package proxy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

type secretSummary struct {
	Name, Status, VersionInfo, Source string
	Chain, Roots                      []string
	TrustDomains                      []string
}

func summarizeSecrets(e *Envoy) []secretSummary {
	out := []secretSummary{}
	for _, s := range e.Secrets {
		sum := secretSummary{Name: s.Name, Status: s.Status, VersionInfo: s.VersionInfo, Source: s.Source, Chain: certFPs(s.Chain), Roots: certFPs(s.Roots)}
		for _, r := range s.Roots {
			sum.TrustDomains = append(sum.TrustDomains, r.TrustDomain)
		}
		if len(sum.TrustDomains) > 0 && sum.TrustDomains[0] == "" {
			sum.TrustDomains = nil
		}
		out = append(out, sum)
	}
	return out
}

const version = "2026-05-31T12:00:00Z/1"

func TestReadEnvoy(t *testing.T) {
	p := newRotationPKI(t)
	secrets := map[string]any{
		"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
		"dynamic_active_secrets": []any{
			envoyTLSSecret("default", p.newLeaf, p.newInt.cert, p.newRoot.cert),
			envoyCASecret("ROOTCA", p.newRoot.cert, p.oldRoot.cert),
		},
	}
	want := []secretSummary{
		{Name: "default", Status: "ACTIVE", VersionInfo: version, Chain: fps(p.newLeaf, p.newInt.cert, p.newRoot.cert)},
		{Name: "ROOTCA", Status: "ACTIVE", VersionInfo: version, Roots: fps(p.newRoot.cert, p.oldRoot.cert)},
	}
	spiffe := envoyCASecret("ROOTCA")
	spiffe["secret"].(map[string]any)["validation_context"] = map[string]any{
		"trusted_ca": map[string]any{},
		"custom_validator_config": map[string]any{
			"name": "envoy.tls.cert_validator.spiffe",
			"typed_config": map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
				"trust_domains": []any{
					map[string]any{"name": "east.local", "trust_bundle": map[string]any{"inline_bytes": b64(pemText(p.oldRoot.cert))}},
					map[string]any{"name": "west.local", "trust_bundle": map[string]any{"inline_bytes": b64(pemText(p.newRoot.cert))}},
				},
			},
		},
	}
	inlineString := envoyCASecret("file-root:/etc/certs/root-cert.pem")
	inlineString["secret"].(map[string]any)["validation_context"] = map[string]any{"trusted_ca": map[string]any{"inline_string": pemText(p.oldRoot.cert)}}
	fileRef := envoyCASecret("file-root:/etc/other.pem")
	fileRef["secret"].(map[string]any)["validation_context"] = map[string]any{"trusted_ca": map[string]any{"filename": "/etc/other.pem"}}

	tests := map[string]struct {
		input []byte
		want  []secretSummary
	}{
		"envoy's snake_case SecretsConfigDump is read, every ROOTCA block a root": {
			input: mustJSON(t, secrets),
			want:  want,
		},
		"istioctl's camelCase output reads the same": {
			input: camelJSON(t, map[string]any{"dynamic_active_secrets": secrets["dynamic_active_secrets"]}),
			want:  want,
		},
		"a config_dump holding the secrets among other configs is read": {
			input: mustJSON(t, map[string]any{"configs": []any{
				map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": map[string]any{"node": map[string]any{"id": "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local"}}},
				map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"},
				secrets,
			}}),
			want: want,
		},
		"warming secrets come first, as istioctl lists them": {
			input: mustJSON(t, map[string]any{
				"dynamic_active_secrets": []any{envoyCASecret("ROOTCA", p.oldRoot.cert)},
				"dynamic_warming_secrets": []any{
					envoyTLSSecret("default", p.newLeaf, p.newInt.cert),
					map[string]any{"name": "kubernetes://missing", "version_info": "uninitialized", "last_updated": "2026-05-31T12:00:00Z",
						"secret": map[string]any{"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "kubernetes://missing"}},
				},
			}),
			want: []secretSummary{
				{Name: "default", Status: "WARMING", VersionInfo: version, Chain: fps(p.newLeaf, p.newInt.cert)},
				{Name: "kubernetes://missing", Status: "WARMING", VersionInfo: "uninitialized"},
				{Name: "ROOTCA", Status: "ACTIVE", VersionInfo: version, Roots: fps(p.oldRoot.cert)},
			},
		},
		"a SPIFFE validator's bundles are roots with their trust domain": {
			input: mustJSON(t, map[string]any{"dynamic_active_secrets": []any{spiffe}}),
			want: []secretSummary{{Name: "ROOTCA", Status: "ACTIVE", VersionInfo: version,
				Roots: fps(p.oldRoot.cert, p.newRoot.cert), TrustDomains: []string{"east.local", "west.local"}}},
		},
		"inline_string PEM is read and a file reference is noted": {
			input: mustJSON(t, map[string]any{"dynamic_active_secrets": []any{inlineString, fileRef}}),
			want: []secretSummary{
				{Name: "file-root:/etc/certs/root-cert.pem", Status: "ACTIVE", VersionInfo: version, Roots: fps(p.oldRoot.cert)},
				{Name: "file-root:/etc/other.pem", Status: "ACTIVE", VersionInfo: version, Source: "file /etc/other.pem"},
			},
		},
		"an empty object is a proxy without secrets, as istioctl -o json prints it": {
			input: []byte(`{}`),
			want:  []secretSummary{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := ReadEnvoy(tc.input)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, summarizeSecrets(e), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("secrets (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadEnvoyErrors(t *testing.T) {
	p := newRotationPKI(t)
	rootCA := envoyCASecret("ROOTCA", p.oldRoot.cert)
	b := rootCA["secret"].(map[string]any)["validation_context"].(map[string]any)["trusted_ca"].(map[string]any)["inline_bytes"].(string)
	truncated := envoyCASecret("ROOTCA")
	truncated["secret"].(map[string]any)["validation_context"] = map[string]any{"trusted_ca": map[string]any{"inline_bytes": b[:len(b)-6]}}
	truncatedPEM := envoyCASecret("ROOTCA")
	truncatedPEM["secret"].(map[string]any)["validation_context"] = map[string]any{"trusted_ca": map[string]any{"inline_bytes": b64(pemText(p.oldRoot.cert, p.newRoot.cert)[:700])}}
	keyInChain := envoyTLSSecret("default", p.newLeaf)
	keyInChain["secret"].(map[string]any)["tls_certificate"].(map[string]any)["certificate_chain"] = map[string]any{
		"inline_bytes": b64(pemText(p.newLeaf) + "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n")}
	noChain := envoyTLSSecret("default", p.newLeaf)
	noChain["secret"].(map[string]any)["tls_certificate"] = map[string]any{"private_key": map[string]any{"inline_bytes": b64("[redacted]")}}
	dump := func(s ...any) string { return string(mustJSON(t, map[string]any{"dynamic_active_secrets": s})) }

	tests := map[string]struct {
		input string
		want  []string
	}{
		"empty input is refused": {
			input: "",
			want:  []string{"envoy config dump: empty input"},
		},
		"broken JSON is refused": {
			input: `{"dynamic_active_secrets": [`,
			want:  []string{"envoy config dump: invalid JSON"},
		},
		"an array is not a dump": {
			input: `[]`,
			want:  []string{"envoy config dump: a JSON array is not an envoy dump", "meshca ztunnel certs"},
		},
		"a ztunnel dump points to the ztunnel command": {
			input: `{"certificates": []}`,
			want:  []string{"ztunnel config dump", "meshca ztunnel certs"},
		},
		"a config_dump without secrets says how to fetch them": {
			input: `{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]}`,
			want:  []string{"configs hold no SecretsConfigDump", "mask=dynamic_active_secrets,dynamic_warming_secrets"},
		},
		"an unrelated object is refused": {
			input: `{"kind": "ConfigMap"}`,
			want:  []string{"neither a SecretsConfigDump nor a config_dump"},
		},
		"truncated base64 names the secret and field": {
			input: dump(truncated),
			want:  []string{"envoy secret ROOTCA (active): validation_context.trusted_ca: inline_bytes is not valid base64"},
		},
		"a truncated PEM in ROOTCA names the secret": {
			input: dump(truncatedPEM),
			want:  []string{"envoy secret ROOTCA (active): validation_context.trusted_ca", "PEM block 1"},
		},
		"a PEM block that is not a certificate names the secret and block": {
			input: dump(keyInChain),
			want:  []string{"envoy secret default (active): tls_certificate.certificate_chain: PEM block 2 is \"PRIVATE KEY\", expected CERTIFICATE"},
		},
		"a secret without a name is refused": {
			input: `{"dynamic_warming_secrets": [{"version_info": "1"}]}`,
			want:  []string{"warming secret #0: missing name"},
		},
		"a tls_certificate without its chain names the secret": {
			input: dump(noChain),
			want:  []string{"envoy secret default (active): tls_certificate has no certificate_chain"},
		},
		"secrets of the wrong JSON type are refused": {
			input: `{"dynamic_active_secrets": {"name": "default"}}`,
			want:  []string{"envoy config dump: secrets:"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ReadEnvoy([]byte(tc.input))
			wantErr(t, err, tc.want...)
		})
	}
}

func TestEnvoyWorkload(t *testing.T) {
	p := newRotationPKI(t)
	tests := map[string]struct {
		secrets []any
		warming []any
		want    identitySummary
		signer  string
		anchor  string
		warn    []string
	}{
		"the workload is the active default chain with the active ROOTCA roots": {
			secrets: []any{envoyTLSSecret("default", p.newLeaf, p.newInt.cert, p.newRoot.cert), envoyCASecret("ROOTCA", p.oldRoot.cert, p.newRoot.cert)},
			want: identitySummary{Name: idA, State: "ACTIVE", Status: "ACTIVE",
				Chain: fps(p.newLeaf, p.newInt.cert, p.newRoot.cert), Roots: fps(p.oldRoot.cert, p.newRoot.cert),
				Trust: NewTrust(fps(p.oldRoot.cert, p.newRoot.cert)...)},
			signer: fps(p.newInt.cert)[0],
			anchor: fps(p.newRoot.cert)[0],
		},
		"a leaf whose root is not trusted has a signer but no anchor": {
			secrets: []any{envoyTLSSecret("default", p.newLeaf, p.newInt.cert), envoyCASecret("ROOTCA", p.oldRoot.cert)},
			want: identitySummary{Name: idA, State: "ACTIVE", Status: "ACTIVE",
				Chain: fps(p.newLeaf, p.newInt.cert), Roots: fps(p.oldRoot.cert), Trust: NewTrust(fps(p.oldRoot.cert)...)},
			signer: fps(p.newInt.cert)[0],
		},
		"only a warming default means no certificate yet": {
			secrets: []any{envoyCASecret("ROOTCA", p.oldRoot.cert)},
			warming: []any{envoyTLSSecret("default", p.newLeaf)},
			want:    identitySummary{Name: "default", State: "WARMING", Status: "WARMING", Roots: fps(p.oldRoot.cert), Trust: NewTrust(fps(p.oldRoot.cert)...)},
			warn:    []string{"no active default secret: the proxy holds no workload certificate yet"},
		},
		"no secrets at all is an empty workload": {
			want: identitySummary{Name: "default"},
			warn: []string{"no active default secret: the proxy holds no workload certificate yet", "no active ROOTCA secret: the proxy trusts no mesh root yet"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := ReadEnvoy(mustJSON(t, map[string]any{"dynamic_active_secrets": tc.secrets, "dynamic_warming_secrets": tc.warming}))
			if err != nil {
				t.Fatal(err)
			}
			w := e.Workload()
			got := summarize(&w, false)
			got.ChainRoles, got.RootRoles = nil, nil
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("workload (-want +got):\n%s", diff)
			}
			if got := fingerprintOf(w.Signer()); got != tc.signer {
				t.Errorf("signer = %q, want %q", got, tc.signer)
			}
			if got := fingerprintOf(w.Anchor()); got != tc.anchor {
				t.Errorf("anchor = %q, want %q", got, tc.anchor)
			}
			if diff := cmp.Diff(tc.warn, e.Warnings()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}
