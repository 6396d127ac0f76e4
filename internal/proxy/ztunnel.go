package proxy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Ztunnel is what one ztunnel holds: a certificate per identity of the
// ambient workloads on its node (facts §3).
type Ztunnel struct {
	// Identities in dump order (ztunnel sorts them by identity).
	Identities []Identity
}

// Empty reports whether the ztunnel holds no identity at all: a ztunnel on a
// node without ambient workloads. That is "nothing to verify", never a pass.
func (z *Ztunnel) Empty() bool { return len(z.Identities) == 0 }

// Legacy reports whether any identity is in the pre-1.26 format (no
// rootCerts).
func (z *Ztunnel) Legacy() bool {
	for i := range z.Identities {
		if z.Identities[i].Legacy {
			return true
		}
	}
	return false
}

// Warnings lists what a user should know about the dump but that is not an
// error: no certificates, legacy format, repeated roots.
func (z *Ztunnel) Warnings() []string {
	var out []string
	if z.Empty() {
		out = append(out, "ztunnel holds no certificates (no ambient workloads on its node): nothing to verify")
	}
	if z.Legacy() {
		out = append(out, "dump has no rootCerts (ztunnel before 1.26): the root is the last certChain entry and this ztunnel trusts a single root; upgrade ztunnel before rotating the CA")
	}
	for i := range z.Identities {
		id := &z.Identities[i]
		if t := id.Trust(); t.Duplicates > 0 {
			out = append(out, fmt.Sprintf("%s: rootCerts holds %d entries for %d distinct roots (%d duplicates); trust is compared as a set",
				id.Name, len(id.Roots), len(t.Roots), t.Duplicates))
		}
	}
	return out
}

// ztunnelCertsDump is one entry of ztunnel's "certificates" array. Pointers
// tell a missing field from an empty one.
type ztunnelCertsDump struct {
	Identity  *string        `json:"identity"`
	State     *string        `json:"state"`
	CertChain []*ztunnelCert `json:"certChain"`
	RootCerts []*ztunnelCert `json:"rootCerts"`
}

type ztunnelCert struct {
	PEM            *string `json:"pem"`
	SerialNumber   string  `json:"serialNumber"`
	ValidFrom      string  `json:"validFrom"`
	ExpirationTime string  `json:"expirationTime"`
}

// ReadZtunnel reads the certificates of a ztunnel /config_dump. It accepts
// the whole dump (an object with a "certificates" array among other keys) or
// the bare array. Each certificate's "pem" may be base64 of PEM (ztunnel >=
// 1.22) or raw PEM (older); "rootCerts" may be absent (before 1.26).
func ReadZtunnel(data []byte) (*Ztunnel, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("ztunnel config dump: empty input")
	}
	var entries []ztunnelCertsDump
	switch trimmed[0] {
	case '[':
		if err := json.Unmarshal(trimmed, &entries); err != nil {
			return nil, fmt.Errorf("ztunnel config dump: invalid JSON: %w", err)
		}
	case '{':
		var top map[string]json.RawMessage
		if err := json.Unmarshal(trimmed, &top); err != nil {
			return nil, fmt.Errorf("ztunnel config dump: invalid JSON: %w", err)
		}
		raw, ok := top["certificates"]
		if !ok {
			if isEnvoyDump(top) {
				return nil, errors.New("ztunnel config dump: this is an envoy config dump: use `meshca proxy certs`")
			}
			return nil, errors.New(`ztunnel config dump: no "certificates" field: expected ztunnel's /config_dump (port 15000) or its certificates array`)
		}
		if err := json.Unmarshal(raw, &entries); err != nil {
			return nil, fmt.Errorf("ztunnel config dump: certificates: invalid JSON: %w", err)
		}
	default:
		return nil, errors.New("ztunnel config dump: invalid JSON: expected an object or an array")
	}
	z := &Ztunnel{Identities: make([]Identity, 0, len(entries))}
	for i, e := range entries {
		id, err := readZtunnelIdentity(i, e)
		if err != nil {
			return nil, err
		}
		z.Identities = append(z.Identities, id)
	}
	return z, nil
}

func readZtunnelIdentity(i int, e ztunnelCertsDump) (Identity, error) {
	if e.Identity == nil || *e.Identity == "" {
		return Identity{}, fmt.Errorf("ztunnel config dump: certificates[%d]: missing identity", i)
	}
	name := *e.Identity
	if e.State == nil || *e.State == "" {
		return Identity{}, fmt.Errorf("ztunnel identity %s: missing state", name)
	}
	id := Identity{Name: name, State: *e.State}
	var err error
	if id.Chain, err = readZtunnelCerts(name, "certChain", e.CertChain); err != nil {
		return Identity{}, err
	}
	if id.Roots, err = readZtunnelCerts(name, "rootCerts", e.RootCerts); err != nil {
		return Identity{}, err
	}
	// istioctl's rule for the pre-1.26 format: a chain but no roots.
	id.Legacy = len(id.Chain) > 0 && len(id.Roots) == 0
	return id, nil
}

func readZtunnelCerts(identity, field string, entries []*ztunnelCert) ([]Cert, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	certs := make([]Cert, 0, len(entries))
	for i, e := range entries {
		where := fmt.Sprintf("ztunnel identity %s: %s[%d]", identity, field, i)
		if e == nil {
			return nil, fmt.Errorf("%s: null entry", where)
		}
		if e.PEM == nil || strings.TrimSpace(*e.PEM) == "" {
			return nil, fmt.Errorf("%s: missing pem", where)
		}
		text, err := decodeZtunnelPEM(*e.PEM)
		if err != nil {
			return nil, fmt.Errorf("%s: pem: %w", where, err)
		}
		parsed, err := ParseCerts(where, text)
		if err != nil {
			return nil, err
		}
		if len(parsed) != 1 {
			return nil, fmt.Errorf("%s: pem holds %d certificates, expected one", where, len(parsed))
		}
		c := parsed[0]
		c.Reported = Reported{PEM: *e.PEM, SerialNumber: e.SerialNumber, ValidFrom: e.ValidFrom, ExpirationTime: e.ExpirationTime}
		certs = append(certs, c)
	}
	return certs, nil
}

// decodeZtunnelPEM returns the PEM text of a "pem" field: raw PEM as older
// ztunnels wrote it, or base64 of PEM since 1.22 (facts §3).
func decodeZtunnelPEM(s string) ([]byte, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-----BEGIN") {
		return []byte(t), nil
	}
	out, err := base64.StdEncoding.DecodeString(t)
	if err != nil {
		return nil, fmt.Errorf("neither PEM nor valid base64 (truncated?): %w", err)
	}
	return out, nil
}
