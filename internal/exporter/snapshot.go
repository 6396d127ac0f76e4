package exporter

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// Values of the source label of meshca_ca_cert_not_after_seconds.
const (
	SourceCACerts   = "cacerts"
	SourceConfigMap = "istio-ca-root-cert"
	SourceWebhook   = "webhook"
)

// caCert is one root or intermediate as published.
type caCert struct {
	source string
	cert   *x509.Certificate
}

// caSnapshot is what the CA side of a cluster holds.
type caSnapshot struct {
	certs []caCert
}

// add keeps c once per source (a root repeated in a bundle, or carried by
// every namespace's ConfigMap, is one series).
func (s *caSnapshot) add(source string, certs ...*x509.Certificate) {
	for _, c := range certs {
		if !slices.ContainsFunc(s.certs, func(x caCert) bool { return x.source == source && x.cert.Equal(c) }) {
			s.certs = append(s.certs, caCert{source: source, cert: c})
		}
	}
}

// readCA reads the CA istiod signs with (mesh.ReadCA), finding the Istio
// namespace like verify does when it is not given.
func readCA(ctx context.Context, cs kubernetes.Interface, namespace string) (*mesh.CA, error) {
	ns, err := istioNamespace(ctx, cs, namespace)
	if err != nil {
		return nil, err
	}
	return mesh.ReadCA(ctx, cs, ns)
}

// istioNamespace is namespace, or that of the istiod Deployments
// (mesh.FindIstiods), or mesh.DefaultNamespace.
func istioNamespace(ctx context.Context, cs kubernetes.Interface, namespace string) (string, error) {
	if namespace != "" {
		return namespace, nil
	}
	istiods, err := mesh.FindIstiods(ctx, cs, "")
	if err != nil {
		return "", err
	}
	if len(istiods) > 0 {
		return istiods[0].Namespace, nil
	}
	return mesh.DefaultNamespace, nil
}

// refreshCA reads the CA side of c once: cacerts, the istio-ca-root-cert
// ConfigMaps, istiod's webhooks and the rotation record, each a stage that
// fails on its own. A failed stage keeps what its last success read (its
// error counter and last-scrape timestamp say how old that is).
func (e *Exporter) refreshCA(ctx context.Context, c *clusterState) {
	snap := &caSnapshot{}
	cs := c.Source.Clientset
	ns, nsErr := istioNamespace(ctx, cs, c.Source.Namespace)
	failed := map[string]bool{}
	e.stage(c, StageCA, func() error {
		failed[SourceCACerts] = true
		if nsErr != nil {
			return nsErr
		}
		ca, err := mesh.ReadCA(ctx, cs, ns)
		if err != nil {
			return err
		}
		snap.add(SourceCACerts, ca.Roots...)
		snap.add(SourceCACerts, ca.Signer)
		if ca.Bundle != nil {
			p, err := ca.Bundle.Parse()
			if err != nil {
				return err
			}
			// cert-chain.pem: the intermediates above the signer (and the
			// root, already published from root-cert.pem).
			snap.add(SourceCACerts, p.Chain...)
		}
		failed[SourceCACerts] = false
		return nil
	})
	e.stage(c, StageConfigMap, func() error {
		certs, err := configMapRoots(ctx, cs)
		snap.add(SourceConfigMap, certs...)
		failed[SourceConfigMap] = err != nil
		return err
	})
	e.stage(c, StageWebhook, func() error {
		if nsErr != nil {
			failed[SourceWebhook] = true
			return nsErr
		}
		certs, err := webhookRoots(ctx, cs, ns)
		snap.add(SourceWebhook, certs...)
		failed[SourceWebhook] = err != nil
		return err
	})
	var rot *rotationSnapshot
	e.stage(c, StageRotation, func() error {
		if nsErr != nil {
			return nsErr
		}
		var err error
		rot, err = readRotation(ctx, cs, ns)
		return err
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ca != nil {
		for _, x := range c.ca.certs {
			if failed[x.source] {
				snap.add(x.source, x.cert)
			}
		}
	}
	c.ca = snap
	if rot != nil {
		c.rotation = rot
	}
}

// configMapRoots reads the istio-ca-root-cert ConfigMaps
// (mesh.ReadRootConfigMaps) and parses each distinct content once.
func configMapRoots(ctx context.Context, cs kubernetes.Interface) ([]*x509.Certificate, error) {
	cms, err := mesh.ReadRootConfigMaps(ctx, cs)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	var errs []error
	seen := map[string]bool{}
	for i := range cms {
		cm := &cms[i]
		if cm.Err != nil {
			errs = append(errs, fmt.Errorf("configmap %s/%s: %w", cm.Namespace, "istio-ca-root-cert", cm.Err))
			continue
		}
		if seen[cm.Data] {
			continue
		}
		seen[cm.Data] = true
		certs, err := pki.ParseCertificates("configmap "+cm.Namespace+"/istio-ca-root-cert", []byte(cm.Data))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, certs...)
	}
	return out, errors.Join(errs...)
}

// webhookRoots reads the caBundle istiod patches into its webhooks with the
// whole root-cert.pem (facts §3): every mutating and validating webhook
// whose service is an istiod in namespace.
func webhookRoots(ctx context.Context, cs kubernetes.Interface, namespace string) ([]*x509.Certificate, error) {
	hooks, err := mesh.Webhooks(ctx, cs)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	var errs []error
	for _, w := range hooks {
		if !w.CallsIstiod(namespace) || len(w.CABundle) == 0 {
			continue
		}
		certs := w.Certificates()
		if len(certs) == 0 {
			errs = append(errs, fmt.Errorf("%s clientConfig.caBundle: no certificate the API server could use", w))
			continue
		}
		out = append(out, certs...)
	}
	return out, errors.Join(errs...)
}
