package mesh

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/proxy"
)

// Names of the webhook configurations istiod patches with its root-cert.pem
// at every CA reload.
const (
	// InjectorWebhook is the sidecar injector's MutatingWebhookConfiguration.
	InjectorWebhook = "istio-sidecar-injector"
	// ValidatorWebhookPrefix starts the name of istiod's
	// ValidatingWebhookConfigurations (+ revision and namespace, e.g.
	// istio-validator-istio-system).
	ValidatorWebhookPrefix = "istio-validator-"
)

// Webhook is the trust of one webhook of a mutating or validating webhook
// configuration: the API server calls its server trusting only CABundle.
type Webhook struct {
	// Kind is mutatingwebhookconfiguration or validatingwebhookconfiguration.
	Kind string
	// Configuration and Name name the configuration and the webhook in it.
	Configuration, Name string
	CABundle            []byte
	// Service is the clientConfig's Service; nil for a URL webhook.
	Service *admissionregistrationv1.ServiceReference
	// Istiod is set for the configurations istiod patches itself: its
	// sidecar injector and its validators.
	Istiod bool
}

// String names the webhook as kubectl would: "kind name (webhook hook)".
func (w Webhook) String() string {
	return fmt.Sprintf("%s %s (webhook %s)", w.Kind, w.Configuration, w.Name)
}

// Certificates are those of CABundle as the API server reads it
// (pki.PoolCertificates).
func (w Webhook) Certificates() []*x509.Certificate { return pki.PoolCertificates(w.CABundle) }

// Trust is the set of Certificates.
func (w Webhook) Trust() proxy.Trust { return proxy.NewTrust(pki.Fingerprints(w.Certificates())...) }

// CallsIstiod reports whether the webhook's service is istiod (istiod or
// istiod-<revision>) in namespace.
func (w Webhook) CallsIstiod(namespace string) bool {
	s := w.Service
	return s != nil && s.Namespace == namespace && (s.Name == "istiod" || strings.HasPrefix(s.Name, "istiod-"))
}

// Webhooks lists every webhook of every mutating and validating webhook
// configuration of the cluster.
func Webhooks(ctx context.Context, cs kubernetes.Interface) ([]Webhook, error) {
	var out []Webhook
	mws, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list mutatingwebhookconfigurations: %w", err)
	}
	for _, mw := range mws.Items {
		for _, w := range mw.Webhooks {
			out = append(out, Webhook{Kind: "mutatingwebhookconfiguration", Configuration: mw.Name, Name: w.Name, CABundle: w.ClientConfig.CABundle, Service: w.ClientConfig.Service, Istiod: mw.Name == InjectorWebhook})
		}
	}
	vws, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list validatingwebhookconfigurations: %w", err)
	}
	for _, vw := range vws.Items {
		for _, w := range vw.Webhooks {
			out = append(out, Webhook{Kind: "validatingwebhookconfiguration", Configuration: vw.Name, Name: w.Name, CABundle: w.ClientConfig.CABundle, Service: w.ClientConfig.Service, Istiod: strings.HasPrefix(vw.Name, ValidatorWebhookPrefix)})
		}
	}
	return out, nil
}
