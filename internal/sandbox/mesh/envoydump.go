package mesh

import (
	"encoding/json"
	"fmt"
	"time"
)

// The JSON of envoy's admin dump, in envoy's own snake_case.
type envoyConfigDump struct {
	Configs []any `json:"configs"`
}

type envoyTypedOnly struct {
	Type string `json:"@type"`
}

type envoyBootstrapDump struct {
	Type        string         `json:"@type"`
	Bootstrap   map[string]any `json:"bootstrap"`
	LastUpdated string         `json:"last_updated"`
}

type envoySecretsDump struct {
	Type                  string               `json:"@type"`
	DynamicActiveSecrets  []envoyDynamicSecret `json:"dynamic_active_secrets,omitempty"`
	DynamicWarmingSecrets []envoyDynamicSecret `json:"dynamic_warming_secrets,omitempty"`
}

type envoyDynamicSecret struct {
	Name        string      `json:"name"`
	VersionInfo string      `json:"version_info,omitempty"`
	LastUpdated string      `json:"last_updated"`
	Secret      envoySecret `json:"secret"`
}

type envoySecret struct {
	Type              string                  `json:"@type"`
	Name              string                  `json:"name"`
	TLSCertificate    *envoyTLSCertificate    `json:"tls_certificate,omitempty"`
	ValidationContext *envoyValidationContext `json:"validation_context,omitempty"`
}

type envoyTLSCertificate struct {
	CertificateChain envoyDataSource `json:"certificate_chain"`
	PrivateKey       envoyDataSource `json:"private_key"`
}

type envoyValidationContext struct {
	TrustedCA envoyDataSource `json:"trusted_ca"`
}

// envoyDataSource.InlineBytes is a proto bytes field: base64 in JSON.
type envoyDataSource struct {
	InlineBytes string `json:"inline_bytes"`
}

// redacted is what envoy shows for a private key: base64 of "[redacted]".
var redacted = b64Bytes([]byte("[redacted]"))

// redacted is what envoy shows for a private key: base64 of "[redacted]".

// DumpSecret is one dynamic secret of envoy's admin dump: its name, version,
// when it was last updated and its PEM (a certificate chain for "default",
// the trusted CAs for "ROOTCA"). A private key is never carried: envoy
// shows it redacted.
type DumpSecret struct {
	Name, Version string
	Updated       time.Time
	CertChainPEM  []byte
	TrustedCAPEM  []byte
}

// RenderSecretsDump returns envoy's SecretsConfigDump of secrets: a
// tls_certificate secret with certificate_chain (base64 of the PEM) and a
// redacted key, or a validation_context secret with trusted_ca (base64 of
// the PEM of every root), in the reference format (facts §4).
func RenderSecretsDump(secrets []DumpSecret) ([]byte, error) {
	body, err := json.MarshalIndent(secretsDump(secrets), "", " ")
	if err != nil {
		return nil, fmt.Errorf("secrets dump: %w", err)
	}
	return body, nil
}

func secretsDump(secrets []DumpSecret) envoySecretsDump {
	d := envoySecretsDump{Type: secretsConfigDumpType}
	for _, s := range secrets {
		ds := envoyDynamicSecret{
			Name: s.Name, VersionInfo: s.Version, LastUpdated: protoTimestamp(s.Updated),
			Secret: envoySecret{Type: secretType, Name: s.Name},
		}
		if len(s.CertChainPEM) > 0 {
			ds.Secret.TLSCertificate = &envoyTLSCertificate{
				CertificateChain: envoyDataSource{InlineBytes: b64Bytes(s.CertChainPEM)},
				PrivateKey:       envoyDataSource{InlineBytes: redacted},
			}
		} else {
			ds.Secret.ValidationContext = &envoyValidationContext{TrustedCA: envoyDataSource{InlineBytes: b64Bytes(s.TrustedCAPEM)}}
		}
		d.DynamicActiveSecrets = append(d.DynamicActiveSecrets, ds)
	}
	return d
}

// RenderConfigDump renders GET /config_dump as envoy does: a ConfigDump whose
// "configs" hold a BootstrapConfigDump (node id and cluster) and the
// SecretsConfigDump. With a mask
// (?mask=dynamic_active_secrets,dynamic_warming_secrets) envoy trims every
// config to the masked fields, so the bootstrap keeps only its @type.
func RenderConfigDump(masked bool, nodeID, cluster string, now time.Time, secrets []DumpSecret) ([]byte, error) {
	var boot any = envoyTypedOnly{Type: bootstrapConfigDumpType}
	if !masked {
		boot = envoyBootstrapDump{
			Type:        bootstrapConfigDumpType,
			Bootstrap:   map[string]any{"node": map[string]any{"id": nodeID, "cluster": cluster}},
			LastUpdated: protoTimestamp(now),
		}
	}
	body, err := json.MarshalIndent(envoyConfigDump{Configs: []any{boot, secretsDump(secrets)}}, "", " ")
	if err != nil {
		return nil, fmt.Errorf("config dump: %w", err)
	}
	return body, nil
}
