// Package bundle owns the cacerts bundle: the four files istiod loads
// (istio-ca-facts.md §1), reading and writing them as a directory (the
// tools/certs Makefile layout) or as Secret data, validating them exactly as
// istiod does at load, istiod 1.28's hot-reload rule for a change of bundle,
// and the bundles of the three rotation phases (§5).
package bundle

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshca/meshca/internal/pki"
)

// File names of the cacerts Secret keys and of the Makefile layout.
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	CertChainFile = "cert-chain.pem"
	RootCertFile  = "root-cert.pem"
	CRLFile       = "ca-crl.pem"
	RootKeyFile   = "root-key.pem"
)

// Files lists the four files istiod requires, in the order they are shown.
var Files = []string{CACertFile, CAKeyFile, CertChainFile, RootCertFile}

// Bundle is a cacerts bundle as exact bytes. Bytes matter: istiod 1.28
// accepts a new root-cert.pem only if its bytes contain the old ones or
// vice versa, so meshca never re-encodes a file it did not create.
type Bundle struct {
	CACert    []byte
	CAKey     []byte
	CertChain []byte
	RootCert  []byte
	// CRL is the optional ca-crl.pem, carried along unchanged.
	CRL []byte
	// Source names where the bundle came from (a directory or a Secret),
	// prefixed to file names in errors.
	Source string
}

// Parsed is the certificate view of a Bundle.
type Parsed struct {
	Signer *x509.Certificate   // ca-cert.pem (first block)
	Key    crypto.Signer       // ca-key.pem
	Chain  []*x509.Certificate // cert-chain.pem
	Roots  []*x509.Certificate // root-cert.pem, in file order, duplicates kept
}

// ErrIncomplete is returned when some of the four files are missing.
var ErrIncomplete = errors.New("incomplete signing CA bundle")

// Load reads a bundle directory: a cacerts export or a Makefile cluster
// directory. All four files must be present (istiod 1.27+ refuses to start on
// a partial bundle).
func Load(dir string) (*Bundle, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("read bundle directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: give the directory holding %s", dir, strings.Join(Files, ", "))
	}
	b := &Bundle{Source: dir}
	var missing []string
	for _, f := range append(Files, CRLFile) {
		data, err := pki.ReadFile(filepath.Join(dir, f))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if f != CRLFile {
				missing = append(missing, f)
			}
			continue
		case err != nil:
			return nil, err
		}
		*b.field(f) = data
	}
	if err := b.complete(missing); err != nil {
		return nil, err
	}
	return b, nil
}

// FromSecretData builds a bundle from the data of a cacerts Secret.
func FromSecretData(source string, data map[string][]byte) (*Bundle, error) {
	b := &Bundle{Source: source}
	var missing []string
	for _, f := range append(Files, CRLFile) {
		v, ok := data[f]
		if !ok {
			if f != CRLFile {
				missing = append(missing, f)
			}
			continue
		}
		if len(v) > pki.MaxFileSize {
			return nil, fmt.Errorf("%s: %w", b.path(f), pki.ErrTooLarge)
		}
		*b.field(f) = bytes.Clone(v)
	}
	if err := b.complete(missing); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bundle) complete(missing []string) error {
	switch {
	case len(missing) == len(Files):
		return fmt.Errorf("%s holds no cacerts bundle: expected %s", b.Source, strings.Join(Files, ", "))
	case len(missing) > 0:
		return fmt.Errorf("%s: %w: missing %s (istiod 1.27+ refuses to start on a partial bundle; provide all of %s)",
			b.Source, ErrIncomplete, strings.Join(missing, ", "), strings.Join(Files, ", "))
	}
	return nil
}

// SecretData returns the bundle as the data of a cacerts Secret.
func (b *Bundle) SecretData() map[string][]byte {
	d := map[string][]byte{
		CACertFile:    bytes.Clone(b.CACert),
		CAKeyFile:     bytes.Clone(b.CAKey),
		CertChainFile: bytes.Clone(b.CertChain),
		RootCertFile:  bytes.Clone(b.RootCert),
	}
	if len(b.CRL) > 0 {
		d[CRLFile] = bytes.Clone(b.CRL)
	}
	return d
}

// Clone returns a deep copy of b.
func (b *Bundle) Clone() *Bundle {
	c := &Bundle{Source: b.Source}
	for _, f := range append(Files, CRLFile) {
		*c.field(f) = bytes.Clone(*b.field(f))
	}
	return c
}

// Equal reports whether two bundles have byte-identical files.
func (b *Bundle) Equal(o *Bundle) bool {
	for _, f := range append(Files, CRLFile) {
		if !bytes.Equal(*b.field(f), *o.field(f)) {
			return false
		}
	}
	return true
}

func (b *Bundle) field(name string) *[]byte {
	switch name {
	case CACertFile:
		return &b.CACert
	case CAKeyFile:
		return &b.CAKey
	case CertChainFile:
		return &b.CertChain
	case RootCertFile:
		return &b.RootCert
	case CRLFile:
		return &b.CRL
	}
	panic("bundle: unknown file " + name)
}

// path names a file of the bundle for error messages.
func (b *Bundle) path(file string) string {
	if b.Source == "" {
		return file
	}
	if strings.HasPrefix(b.Source, "secret ") || strings.HasPrefix(b.Source, "phase ") {
		return b.Source + "[" + file + "]"
	}
	return filepath.Join(b.Source, file)
}

// Parse parses the four files strictly; errors name the file and block.
func (b *Bundle) Parse() (*Parsed, error) {
	p := &Parsed{}
	certs, err := pki.ParseCertificates(b.path(CACertFile), b.CACert)
	if err != nil {
		return nil, err
	}
	p.Signer = certs[0]
	if p.Key, err = pki.ParseKey(b.path(CAKeyFile), b.CAKey); err != nil {
		return nil, err
	}
	if p.Chain, err = pki.ParseCertificates(b.path(CertChainFile), b.CertChain); err != nil {
		return nil, err
	}
	if p.Roots, err = pki.ParseCertificates(b.path(RootCertFile), b.RootCert); err != nil {
		return nil, err
	}
	return p, nil
}

// ParseRoots parses only root-cert.pem.
func (b *Bundle) ParseRoots() ([]*x509.Certificate, error) {
	return pki.ParseCertificates(b.path(RootCertFile), b.RootCert)
}

// Write writes the bundle's files into dir as one set (pki.WriteDir: all
// or nothing, the previous files kept until the new set is complete; keys
// 0600), refusing to overwrite an existing ca-key.pem unless force is set.
// A ca-crl.pem of a previous set is dropped when b has none.
func (b *Bundle) Write(dir string, force bool) error {
	return pki.WriteDir(dir, []pki.File{
		{Path: CACertFile, Data: b.CACert},
		{Path: CAKeyFile, Data: b.CAKey, Secret: true},
		{Path: CertChainFile, Data: b.CertChain},
		{Path: RootCertFile, Data: b.RootCert},
		{Path: CRLFile, Data: b.CRL, Drop: len(b.CRL) == 0},
	}, force)
}
