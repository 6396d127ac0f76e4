package mesh

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/proxy"
)

// Secrets istiod signs from (facts §1).
const (
	// CACertsSecret is the plug-in CA Secret.
	CACertsSecret = "cacerts"
	// SelfSignedSecret is where istiod keeps its self-signed CA when no
	// cacerts exists.
	SelfSignedSecret = "istio-ca-secret"
)

// Keys of the alternative cacerts layout (facts §1).
const (
	tlsCertKey = "tls.crt"
	caCertKey  = "ca.crt"
)

// CA is the certificate authority istiod signs workload certificates with,
// as read from its Secret. It never holds a private key in parsed form; the
// Bundle, when present, carries the Secret's bytes for the rotation engine
// and must never be printed.
type CA struct {
	// Namespace and Name of the Secret.
	Namespace, Name string
	// SelfSigned is true for istiod's own istio-ca-secret (no plug-in CA).
	SelfSigned bool
	// Bundle is the four-file bundle of a cacerts Secret in the standard
	// layout; nil for the tls.crt/ca.crt layout and for istio-ca-secret.
	Bundle *bundle.Bundle
	// RootPEM is root-cert.pem verbatim (ca.crt in the alternative layout):
	// istiod copies these bytes into every istio-ca-root-cert ConfigMap.
	RootPEM []byte
	// Roots are its certificates in file order, duplicates kept.
	Roots []*x509.Certificate
	// Signer is ca-cert.pem (tls.crt), the certificate that signs workload
	// leafs.
	Signer *x509.Certificate
}

// Source names the Secret as meshca's errors and reports do.
func (ca *CA) Source() string { return "secret " + ca.Namespace + "/" + ca.Name }

// Trust is the set of roots of RootPEM.
func (ca *CA) Trust() proxy.Trust { return proxy.NewTrust(pki.Fingerprints(ca.Roots)...) }

// SignerFingerprint is the SHA-256 fingerprint of Signer.
func (ca *CA) SignerFingerprint() string { return pki.Fingerprint(ca.Signer) }

// RootPEMSHA256 is the SHA-256 of RootPEM in hex: the bytes every
// istio-ca-root-cert ConfigMap should carry.
func (ca *CA) RootPEMSHA256() string { return sha256Hex(ca.RootPEM) }

// ReadCA reads the CA istiod signs with from namespace: the cacerts Secret
// (keys root-cert.pem and ca-cert.pem, or ca.crt and tls.crt), or, without
// one, istiod's self-signed istio-ca-secret. The error wraps ErrNotFound
// when neither exists.
func ReadCA(ctx context.Context, cs kubernetes.Interface, namespace string) (*CA, error) {
	for _, name := range []string{CACertsSecret, SelfSignedSecret} {
		s, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read secret %s/%s: %w", namespace, name, err)
		}
		return ParseCA(s)
	}
	return nil, fmt.Errorf("secret %s/%s (nor %s): %w", namespace, CACertsSecret, SelfSignedSecret, ErrNotFound)
}

// ParseCA reads the roots and the signer of a cacerts or istio-ca-secret
// Secret. The key is not parsed: nothing here needs it.
func ParseCA(s *corev1.Secret) (*CA, error) {
	ca := &CA{Namespace: s.Namespace, Name: s.Name, SelfSigned: s.Name == SelfSignedSecret}
	src := ca.Source()
	rootKey, signerKey := bundle.RootCertFile, bundle.CACertFile
	switch {
	case ca.SelfSigned:
		// istio-ca-secret: the self-signed CA signs and is the root.
		if len(bytes.TrimSpace(s.Data[rootKey])) == 0 {
			rootKey = signerKey
		}
	case s.Data[bundle.RootCertFile] == nil && s.Data[caCertKey] != nil:
		rootKey, signerKey = caCertKey, tlsCertKey
	default:
		b, err := bundle.FromSecretData(src, s.Data)
		if err != nil {
			return nil, err
		}
		ca.Bundle = b
	}
	ca.RootPEM = bytes.Clone(s.Data[rootKey])
	var err error
	if ca.Roots, err = pki.ParseCertificates(src+"["+rootKey+"]", ca.RootPEM); err != nil {
		return nil, err
	}
	signer, err := pki.ParseCertificates(src+"["+signerKey+"]", s.Data[signerKey])
	if err != nil {
		return nil, err
	}
	ca.Signer = signer[0]
	return ca, nil
}

// RootConfigMap is one istio-ca-root-cert ConfigMap.
type RootConfigMap struct {
	// Namespace of the ConfigMap.
	Namespace string
	// Data is root-cert.pem verbatim.
	Data string
	// Trust is the set of roots it carries.
	Trust proxy.Trust
	// Err says why it could not be read (missing key, bad PEM); Trust is
	// empty then.
	Err error
}

// ReadPublicRoots reads the istio-ca-root-cert ConfigMap of the Istio
// namespace: the exact root-cert.pem bytes istiod loaded (facts §1), the
// public view of its CA for a user without access to Secret cacerts.
func ReadPublicRoots(ctx context.Context, cs kubernetes.Interface, namespace string) (*proxy.RootConfigMap, error) {
	cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, proxy.RootConfigMapName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read configmap %s/%s: %w", namespace, proxy.RootConfigMapName, err)
	}
	return proxy.ReadRootConfigMap(cm)
}

// ReadRootConfigMaps reads the istio-ca-root-cert ConfigMap of every
// namespace, sorted by namespace.
func ReadRootConfigMaps(ctx context.Context, cs kubernetes.Interface) ([]RootConfigMap, error) {
	var out []RootConfigMap
	opts := metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", proxy.RootConfigMapName).String(),
		Limit:         listPageSize,
	}
	for {
		list, err := cs.CoreV1().ConfigMaps(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list configmaps %s in all namespaces: %w", proxy.RootConfigMapName, err)
		}
		for i := range list.Items {
			cm := &list.Items[i]
			// Filter again: the fake clientset ignores field selectors.
			if cm.Name != proxy.RootConfigMapName {
				continue
			}
			r := RootConfigMap{Namespace: cm.Namespace, Data: cm.Data[proxy.RootCertKey]}
			read, err := proxy.ReadRootConfigMap(cm)
			if err != nil {
				r.Err = err
			} else {
				r.Trust = read.Trust()
			}
			out = append(out, r)
		}
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	slices.SortFunc(out, func(a, b RootConfigMap) int { return cmp.Compare(a.Namespace, b.Namespace) })
	return out, nil
}

// DataSHA256 is the SHA-256 of Data in hex.
func (r *RootConfigMap) DataSHA256() string { return sha256Hex([]byte(r.Data)) }

// Consistent reports what differs between a ConfigMap and the CA's
// root-cert.pem: istiod writes the exact bytes into every namespace on each
// successful reload (facts §1), so a difference means istiod has not
// (yet) accepted the current cacerts. Empty when consistent.
func (ca *CA) Consistent(cm *RootConfigMap) []string {
	if cm.Err != nil {
		return []string{cm.Err.Error()}
	}
	var out []string
	missing, extra := cm.Trust.Diff(ca.Trust())
	for _, fp := range missing {
		out = append(out, "missing root "+short(fp))
	}
	for _, fp := range extra {
		out = append(out, "extra root "+short(fp))
	}
	if len(out) == 0 && cm.Data != string(ca.RootPEM) {
		out = append(out, fmt.Sprintf("same roots but not the bytes of %s[%s]: istiod has not reloaded it yet", ca.Source(), bundle.RootCertFile))
	}
	return out
}

func short(fp string) string {
	if len(fp) > 12 {
		return fp[:12]
	}
	return fp
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
