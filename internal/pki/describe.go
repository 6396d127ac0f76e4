package pki

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"
)

// Info describes a certificate for people and for JSON output.
type Info struct {
	Role        Role      `json:"role"`
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	Serial      string    `json:"serial"`
	Fingerprint string    `json:"sha256"`
	NotBefore   time.Time `json:"notBefore"`
	NotAfter    time.Time `json:"notAfter"`
	DaysLeft    int       `json:"daysLeft"`
	KeyType     string    `json:"keyType"`
	IsCA        bool      `json:"isCA"`
	// MaxPathLen is nil when the certificate sets no path length.
	MaxPathLen *int     `json:"maxPathLen,omitempty"`
	SANs       []string `json:"sans,omitempty"`
}

// Describe returns the Info of c at now.
func Describe(c *x509.Certificate, now time.Time) Info {
	info := Info{
		Role:        RoleOf(c),
		Subject:     SubjectString(c),
		Issuer:      IssuerString(c),
		Serial:      Serial(c),
		Fingerprint: Fingerprint(c),
		NotBefore:   c.NotBefore.UTC(),
		NotAfter:    c.NotAfter.UTC(),
		DaysLeft:    DaysLeft(c, now),
		KeyType:     KeyDescription(c.PublicKey),
		IsCA:        c.IsCA,
		SANs:        SANs(c),
	}
	if c.IsCA && (c.MaxPathLen > 0 || c.MaxPathLenZero) {
		n := c.MaxPathLen
		info.MaxPathLen = &n
	}
	return info
}

// Item is one PEM block found by Inspect: a certificate or a private key.
type Item struct {
	File  string `json:"file"`
	Block int    `json:"block"`
	// Kind is "certificate" or "private key".
	Kind string `json:"kind"`
	// Certificate is set for certificates.
	Certificate *Info `json:"certificate,omitempty"`
	// Key is set for private keys: its type and the certificate it matches;
	// the key itself is never included.
	Key *KeyInfo `json:"privateKey,omitempty"`
	// Error is set when the block could not be parsed.
	Error string `json:"error,omitempty"`

	cert   *x509.Certificate
	public any
}

// KeyInfo describes a private key without revealing it.
type KeyInfo struct {
	KeyType string `json:"keyType"`
	// Matches is the fingerprint of the inspected certificate whose public
	// key matches, if any.
	Matches        string `json:"matchesCertificate,omitempty"`
	MatchesSubject string `json:"matchesSubject,omitempty"`
}

// Kinds of Item.
const (
	KindCertificate = "certificate"
	KindPrivateKey  = "private key"
	KindOther       = "other"
)

// Inspect lists the certificates and private keys in the PEM data of named
// files. Keys are matched against every certificate of every file given, so
// inspecting a bundle directory pairs ca-key.pem with ca-cert.pem.
func Inspect(files map[string][]byte, order []string, now time.Time) ([]Item, error) {
	var items []Item
	for _, name := range order {
		blocks, err := DecodeBlocks(name, files[name])
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			it := Item{File: name, Block: b.Index}
			switch {
			case b.Type == "CERTIFICATE":
				it.Kind = KindCertificate
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					return nil, fmt.Errorf("%s: PEM block %d: %w", name, b.Index, err)
				}
				info := Describe(c, now)
				it.Certificate, it.cert = &info, c
			case IsPrivateKeyBlock(b.Type):
				it.Kind = KindPrivateKey
				k, err := ParseKeyBlock(name, b)
				if err != nil {
					return nil, err
				}
				it.Key, it.public = &KeyInfo{KeyType: KeyDescription(k.Public())}, k.Public()
			default:
				it.Kind = KindOther
				it.Error = "PEM block of type " + b.Type
			}
			items = append(items, it)
		}
	}
	for i := range items {
		if items[i].Key == nil {
			continue
		}
		type equaler interface{ Equal(crypto.PublicKey) bool }
		pub, ok := items[i].public.(equaler)
		for _, c := range items {
			if ok && c.cert != nil && pub.Equal(c.cert.PublicKey) {
				items[i].Key.Matches = c.Certificate.Fingerprint
				items[i].Key.MatchesSubject = c.Certificate.Subject
				break
			}
		}
	}
	return items, nil
}
