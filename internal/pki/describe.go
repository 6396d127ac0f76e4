package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"fmt"
	"strings"
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
	// Error is set when the block or the file could not be read or parsed.
	Error string `json:"error,omitempty"`
	// SignatureError is set when the certificate's signature does not
	// verify: with its own key for a self-issued certificate, or with the
	// key of every certificate given that could have issued it.
	SignatureError string `json:"signatureError,omitempty"`

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
	// KindError is a file or block that could not be read or parsed; the
	// listing goes on with the others.
	KindError = "error"
)

// Failed reports whether the item is a problem: an unreadable file or
// block, or a certificate whose signature does not verify.
func (it Item) Failed() bool {
	return it.Kind == KindError || it.SignatureError != ""
}

// Input is one file given to Inspect: its data, or the error that kept it
// from being read.
type Input struct {
	Name string
	Data []byte
	Err  error
}

// Inspect lists the certificates and private keys in the PEM data of named
// files. Keys are matched against every certificate of every file given, so
// inspecting a bundle directory pairs ca-key.pem with ca-cert.pem. A file or
// block that cannot be parsed becomes an item of KindError and the listing
// goes on: one bad key does not hide the rest of a directory.
func Inspect(inputs []Input, now time.Time) []Item {
	var items []Item
	for _, in := range inputs {
		name := in.Name
		if in.Err != nil {
			items = append(items, Item{File: name, Kind: KindError, Error: in.Err.Error()})
			continue
		}
		blocks, err := DecodeBlocks(name, in.Data)
		if err != nil {
			items = append(items, Item{File: name, Kind: KindError, Error: err.Error()})
			continue
		}
		for _, b := range blocks {
			it := Item{File: name, Block: b.Index}
			switch {
			case b.Type == "CERTIFICATE":
				it.Kind = KindCertificate
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					it.Kind, it.Error = KindError, fmt.Sprintf("%s: PEM block %d: %v", name, b.Index, err)
					break
				}
				info := Describe(c, now)
				it.Certificate, it.cert = &info, c
			case IsPrivateKeyBlock(b.Type):
				it.Kind = KindPrivateKey
				k, err := ParseKeyBlock(name, b)
				if err != nil {
					it.Kind, it.Error = KindError, err.Error()
					break
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
	checkSignatures(items)
	return items
}

// checkSignatures sets SignatureError on every certificate whose signature
// does not verify: a self-issued certificate with its own key, any other
// with the key of each given certificate named as its issuer (no judgement
// when its issuer was not given).
func checkSignatures(items []Item) {
	for i := range items {
		c := items[i].cert
		if c == nil {
			continue
		}
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
				items[i].SignatureError = "self-signature does not verify: " + err.Error()
			}
			continue
		}
		var tried []string
		for _, p := range items {
			if p.cert == nil || !bytes.Equal(p.cert.RawSubject, c.RawIssuer) {
				continue
			}
			if c.CheckSignatureFrom(p.cert) == nil {
				tried = nil
				break
			}
			tried = append(tried, ShortFingerprint(p.cert))
		}
		if len(tried) > 0 {
			items[i].SignatureError = "signature does not verify with the key of its issuer " + strings.Join(tried, ", ")
		}
	}
}
