package bundle

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/internal/pki"
)

// FromCA builds the Makefile's per-cluster bundle for an intermediate
// issued by root: cert-chain.pem is the intermediate followed by the root.
func FromCA(root, intermediate *pki.CA) (*Bundle, error) {
	key, err := pki.EncodeKey(intermediate.Key)
	if err != nil {
		return nil, err
	}
	return &Bundle{
		CACert:    pki.EncodeCert(intermediate.Cert),
		CAKey:     key,
		CertChain: pki.EncodeCerts(intermediate.Cert, root.Cert),
		RootCert:  pki.EncodeCert(root.Cert),
	}, nil
}

// LoadRoot reads a root CA directory (root-cert.pem and root-key.pem, as
// written by `meshca ca root` or the Makefile's root-ca target). The
// certificate file must hold exactly one self-signed CA, valid at now, with a
// key the data plane can verify and room for an intermediate under it (no
// pathlen:0), and the key must match it.
func LoadRoot(dir string, now time.Time) (*pki.CA, error) {
	certPath, keyPath := filepath.Join(dir, RootCertFile), filepath.Join(dir, RootKeyFile)
	certs, err := pki.ParseCertificateFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read root: %w", err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s holds %d certificates: a root directory must hold exactly one root (duplicates or a bundle are not accepted here)", certPath, len(certs))
	}
	cert := certs[0]
	// The algorithm first: a DSA root cannot even have its self-signature
	// checked, and must be named as DSA, not as "not self-signed".
	if err := pki.CheckKeyAlgorithm(cert); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if pki.RoleOf(cert) != pki.RoleRoot {
		return nil, fmt.Errorf("%s: %q is not a self-signed CA certificate", certPath, cert.Subject.CommonName)
	}
	switch {
	case now.After(cert.NotAfter):
		return nil, fmt.Errorf("%s: root %q expired on %s", certPath, cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return nil, fmt.Errorf("%s: root %q is not valid before %s", certPath, cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if err := pki.CheckRootForIntermediates(cert); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := pki.ParseKeyFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read root key: %w", err)
	}
	if !pki.KeyMatches(cert, key) {
		return nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return &pki.CA{Cert: cert, Key: key}, nil
}

// WriteRoot writes root-cert.pem and root-key.pem (0600) into dir, as one
// set (pki.WriteDir).
func WriteRoot(dir string, root *pki.CA, force bool) error {
	key, err := pki.EncodeKey(root.Key)
	if err != nil {
		return err
	}
	return pki.WriteDir(dir, []pki.File{
		{Path: RootCertFile, Data: pki.EncodeCert(root.Cert)},
		{Path: RootKeyFile, Data: key, Secret: true},
	}, force)
}
