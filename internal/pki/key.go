// Package pki owns meshca's X.509 material: key and certificate generation
// with the profiles of Istio's tools/certs Makefile (istio-ca-facts.md §6),
// strict PEM parsing with errors that name the file, fingerprints, and the
// small classification helpers (root, intermediate, leaf) the rest of meshca
// builds on. Nothing here touches the network or the cluster.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
)

// KeyType names a private key algorithm and size accepted by --key-type.
type KeyType string

// The key types meshca can generate. RSA4096 is the tools/certs default.
const (
	RSA4096   KeyType = "rsa-4096"
	RSA2048   KeyType = "rsa-2048"
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
)

// KeyTypes lists every supported key type, in the order shown in help texts.
var KeyTypes = []KeyType{RSA4096, RSA2048, ECDSAP256, ECDSAP384}

// ParseKeyType validates a --key-type value.
func ParseKeyType(s string) (KeyType, error) {
	for _, kt := range KeyTypes {
		if string(kt) == strings.ToLower(s) {
			return kt, nil
		}
	}
	names := make([]string, len(KeyTypes))
	for i, kt := range KeyTypes {
		names[i] = string(kt)
	}
	return "", fmt.Errorf("unknown key type %q: use one of %s", s, strings.Join(names, ", "))
}

// GenerateKey creates a new private key of the given type.
func GenerateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("unknown key type %q", kt)
}

// EncodeKey returns the PKCS#8 PEM encoding of key ("PRIVATE KEY"), which
// istiod, envoy and openssl all read.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// KeyDescription describes a public key as "RSA 4096" or "ECDSA P-256".
func KeyDescription(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// KeyMatches reports whether key is the private half of cert's public key.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	return ok && pub.Equal(cert.PublicKey)
}
