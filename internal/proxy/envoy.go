package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
)

// Names of the secrets istio-agent serves to envoy (facts §4).
const (
	// SecretDefault holds the workload certificate chain.
	SecretDefault = "default"
	// SecretRootCA holds the trusted roots.
	SecretRootCA = "ROOTCA"
)

// Secret states, as istioctl pc secret shows them.
const (
	StatusActive  = "ACTIVE"
	StatusWarming = "WARMING"
)

const secretsConfigDumpType = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"

// Envoy is what one envoy proxy (sidecar, gateway, waypoint) holds: its
// dynamic SDS secrets, warming ones first, then active ones (istioctl's
// order).
type Envoy struct {
	Secrets []Secret
}

// Secret is one dynamic secret of envoy's SecretsConfigDump.
type Secret struct {
	// Name is the SDS resource name: "default", "ROOTCA", or a gateway
	// credential such as "kubernetes://my-cert".
	Name string
	// Status is ACTIVE or WARMING.
	Status string
	// VersionInfo and LastUpdated are as envoy reported them.
	VersionInfo string
	LastUpdated string
	// Chain is tls_certificate.certificate_chain, every PEM block, leaf
	// first.
	Chain []Cert
	// Roots are validation_context.trusted_ca, every PEM block (ROOTCA may
	// hold several roots), or the bundles of a SPIFFE certificate validator
	// with their trust domain set.
	Roots []Cert
	// Source notes data envoy holds by reference ("file /path") rather than
	// inline; such a secret has no certificates here.
	Source string
}

// Secret returns the secret with the given name and status, or nil.
func (e *Envoy) Secret(name, status string) *Secret {
	for i := range e.Secrets {
		if e.Secrets[i].Name == name && e.Secrets[i].Status == status {
			return &e.Secrets[i]
		}
	}
	return nil
}

// Workload is the proxy's workload identity in the neutral model: the chain
// of the active default secret and the roots of the active ROOTCA secret.
// Name is the leaf's SPIFFE ID ("default" without one); State is the status
// of the default secret (ACTIVE, or WARMING when only a warming one exists;
// empty when there is none).
func (e *Envoy) Workload() Identity {
	id := Identity{Name: SecretDefault}
	def := e.Secret(SecretDefault, StatusActive)
	if def == nil {
		def = e.Secret(SecretDefault, StatusWarming)
	}
	if def != nil {
		id.State = def.Status
		if def.Status == StatusActive {
			id.Chain = def.Chain
		}
	}
	if leaf := id.Leaf(); leaf != nil {
		if u := spiffeID(leaf); u != nil {
			id.Name = u.String()
		}
	}
	if root := e.Secret(SecretRootCA, StatusActive); root != nil {
		id.Roots = root.Roots
	}
	return id
}

// Warnings lists what a user should know about the dump but that is not an
// error.
func (e *Envoy) Warnings() []string {
	var out []string
	if e.Secret(SecretDefault, StatusActive) == nil {
		out = append(out, "no active default secret: the proxy holds no workload certificate yet")
	}
	if root := e.Secret(SecretRootCA, StatusActive); root == nil {
		out = append(out, "no active ROOTCA secret: the proxy trusts no mesh root yet")
	} else if len(root.Roots) == 0 {
		out = append(out, "the active ROOTCA secret holds no certificate")
	}
	return out
}

func spiffeID(c *Cert) *url.URL {
	for _, u := range c.X509.URIs {
		if u.Scheme == "spiffe" {
			return u
		}
	}
	return nil
}

// The structs below mirror envoy's JSON in camelCase; snake_case input is
// converted first (see camelKeys), so both spellings decode.
type secretsDump struct {
	DynamicActiveSecrets  []*dynamicSecret `json:"dynamicActiveSecrets"`
	DynamicWarmingSecrets []*dynamicSecret `json:"dynamicWarmingSecrets"`
}

type dynamicSecret struct {
	Name        *string          `json:"name"`
	VersionInfo string           `json:"versionInfo"`
	LastUpdated string           `json:"lastUpdated"`
	Secret      *tlsSecretConfig `json:"secret"`
}

type tlsSecretConfig struct {
	Name           string `json:"name"`
	TLSCertificate *struct {
		CertificateChain *dataSource `json:"certificateChain"`
	} `json:"tlsCertificate"`
	ValidationContext *struct {
		TrustedCA             *dataSource `json:"trustedCa"`
		CustomValidatorConfig *struct {
			TypedConfig *struct {
				Type         string `json:"@type"`
				TrustDomains []struct {
					Name        string      `json:"name"`
					TrustBundle *dataSource `json:"trustBundle"`
				} `json:"trustDomains"`
			} `json:"typedConfig"`
		} `json:"customValidatorConfig"`
	} `json:"validationContext"`
}

type dataSource struct {
	InlineBytes  *string `json:"inlineBytes"`
	InlineString *string `json:"inlineString"`
	Filename     *string `json:"filename"`
}

// ReadEnvoy reads envoy's secrets: a bare SecretsConfigDump (as
// `/config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets` or
// `istioctl pc secret -o json` prints it) or a config_dump whose "configs"
// array contains one. Field names may be snake_case (envoy) or camelCase
// (istioctl). Every PEM block of every secret is parsed.
func ReadEnvoy(data []byte) (*Envoy, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("envoy config dump: empty input")
	}
	if trimmed[0] == '[' {
		return nil, errors.New("envoy config dump: a JSON array is not an envoy dump (ztunnel's certificates array? use `meshca ztunnel certs`)")
	}
	if trimmed[0] != '{' {
		return nil, errors.New("envoy config dump: invalid JSON: expected an object (a SecretsConfigDump or a config_dump)")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &top); err != nil {
		return nil, fmt.Errorf("envoy config dump: invalid JSON: %w", err)
	}
	raw, err := findSecretsDump(top, trimmed)
	if err != nil {
		return nil, err
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return nil, fmt.Errorf("envoy config dump: invalid JSON: %w", err)
	}
	camel, err := json.Marshal(camelKeys(generic))
	if err != nil {
		return nil, fmt.Errorf("envoy config dump: %w", err)
	}
	var dump secretsDump
	if err := json.Unmarshal(camel, &dump); err != nil {
		return nil, fmt.Errorf("envoy config dump: secrets: %w", err)
	}
	e := &Envoy{}
	for _, group := range []struct {
		status  string
		secrets []*dynamicSecret
	}{{StatusWarming, dump.DynamicWarmingSecrets}, {StatusActive, dump.DynamicActiveSecrets}} {
		for i, ds := range group.secrets {
			s, err := readSecret(group.status, i, ds)
			if err != nil {
				return nil, err
			}
			e.Secrets = append(e.Secrets, s)
		}
	}
	return e, nil
}

// findSecretsDump returns the SecretsConfigDump inside a config_dump, or the
// input itself when it is one.
func findSecretsDump(top map[string]json.RawMessage, whole []byte) ([]byte, error) {
	if rawConfigs, ok := top["configs"]; ok {
		var configs []json.RawMessage
		if err := json.Unmarshal(rawConfigs, &configs); err != nil {
			return nil, fmt.Errorf("envoy config dump: configs: invalid JSON: %w", err)
		}
		for _, c := range configs {
			var typed struct {
				Type string `json:"@type"`
			}
			if err := json.Unmarshal(c, &typed); err != nil {
				return nil, fmt.Errorf("envoy config dump: configs: invalid JSON: %w", err)
			}
			if typed.Type == secretsConfigDumpType {
				return c, nil
			}
		}
		return nil, errors.New("envoy config dump: configs hold no SecretsConfigDump: fetch /config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets")
	}
	if _, ok := top["certificates"]; ok {
		return nil, errors.New("envoy config dump: this is a ztunnel config dump: use `meshca ztunnel certs`")
	}
	if isEnvoyDump(top) || len(top) == 0 {
		// {} is what istioctl pc secret -o json prints for a proxy without
		// secrets: protobuf JSON omits empty lists.
		return whole, nil
	}
	return nil, errors.New("envoy config dump: neither a SecretsConfigDump nor a config_dump with one: expected envoy's /config_dump (port 15000) or `istioctl pc secret -o json`")
}

// isEnvoyDump recognises a SecretsConfigDump or a config_dump by its keys.
func isEnvoyDump(top map[string]json.RawMessage) bool {
	if _, ok := top["configs"]; ok {
		return true
	}
	if raw, ok := top["@type"]; ok {
		var t string
		if json.Unmarshal(raw, &t) == nil && t == secretsConfigDumpType {
			return true
		}
	}
	for _, k := range []string{"dynamic_active_secrets", "dynamicActiveSecrets", "dynamic_warming_secrets", "dynamicWarmingSecrets", "static_secrets", "staticSecrets"} {
		if _, ok := top[k]; ok {
			return true
		}
	}
	return false
}

func readSecret(status string, i int, ds *dynamicSecret) (Secret, error) {
	if ds == nil {
		return Secret{}, fmt.Errorf("envoy config dump: %s secret #%d: null entry", strings.ToLower(status), i)
	}
	if ds.Name == nil || *ds.Name == "" {
		return Secret{}, fmt.Errorf("envoy config dump: %s secret #%d: missing name", strings.ToLower(status), i)
	}
	s := Secret{Name: *ds.Name, Status: status, VersionInfo: ds.VersionInfo, LastUpdated: ds.LastUpdated}
	sc := ds.Secret
	if sc == nil {
		return s, nil
	}
	where := fmt.Sprintf("envoy secret %s (%s)", s.Name, strings.ToLower(status))
	var err error
	if tc := sc.TLSCertificate; tc != nil {
		if tc.CertificateChain == nil {
			return Secret{}, fmt.Errorf("%s: tls_certificate has no certificate_chain", where)
		}
		if s.Chain, err = readDataSource(&s, where+": tls_certificate.certificate_chain", tc.CertificateChain); err != nil {
			return Secret{}, err
		}
	}
	if vc := sc.ValidationContext; vc != nil {
		if vc.TrustedCA != nil {
			if s.Roots, err = readDataSource(&s, where+": validation_context.trusted_ca", vc.TrustedCA); err != nil {
				return Secret{}, err
			}
		}
		// istio-agent may serve ROOTCA as a SPIFFE validator with one bundle
		// per trust domain instead of trusted_ca.
		if cv := vc.CustomValidatorConfig; len(s.Roots) == 0 && cv != nil && cv.TypedConfig != nil {
			for j, td := range cv.TypedConfig.TrustDomains {
				if td.TrustBundle == nil {
					continue
				}
				certs, err := readDataSource(&s, fmt.Sprintf("%s: spiffe trust_domains[%d] (%s)", where, j, td.Name), td.TrustBundle)
				if err != nil {
					return Secret{}, err
				}
				for k := range certs {
					certs[k].TrustDomain = td.Name
				}
				s.Roots = append(s.Roots, certs...)
			}
		}
	}
	return s, nil
}

// readDataSource parses the certificates of an envoy DataSource. inline_bytes
// is base64 of PEM in JSON; inline_string is PEM.
func readDataSource(s *Secret, where string, d *dataSource) ([]Cert, error) {
	var text []byte
	switch {
	case d.InlineBytes != nil:
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(*d.InlineBytes))
		if err != nil {
			return nil, fmt.Errorf("%s: inline_bytes is not valid base64 (truncated?): %w", where, err)
		}
		text = b
	case d.InlineString != nil:
		text = []byte(*d.InlineString)
	case d.Filename != nil:
		s.Source = "file " + *d.Filename
		return nil, nil
	default:
		return nil, nil
	}
	if len(bytes.TrimSpace(text)) == 0 {
		return nil, nil
	}
	return ParseCerts(where, text)
}

// camelKeys rewrites every object key from snake_case to camelCase, so that
// envoy's own JSON and istioctl's protobuf JSON decode alike. Keys that are
// already camelCase, and "@type", are unchanged.
func camelKeys(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			out[snakeToCamel(k)] = camelKeys(val)
		}
		return out
	case []any:
		for i := range t {
			t[i] = camelKeys(t[i])
		}
		return t
	}
	return v
}

func snakeToCamel(s string) string {
	if !strings.Contains(s, "_") {
		return s
	}
	var b strings.Builder
	upper := false
	for i, r := range s {
		switch {
		case r == '_' && i > 0:
			upper = true
		case upper:
			b.WriteRune(unicode.ToUpper(r))
			upper = false
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
