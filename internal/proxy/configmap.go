package proxy

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// The ConfigMap istiod writes into every namespace on each successful CA
// reload, holding the raw root-cert.pem bytes (facts §1).
const (
	RootConfigMapName = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// RootConfigMap is the content of one istio-ca-root-cert ConfigMap.
type RootConfigMap struct {
	Namespace string
	Name      string
	// Data is root-cert.pem verbatim: istiod's root-update rules compare
	// bytes (facts §1), so the exact text matters.
	Data string
	// Roots are its certificates, every PEM block, in order.
	Roots []Cert
}

// Trust is the set of roots the ConfigMap carries.
func (r *RootConfigMap) Trust() Trust { return TrustOf(r.Roots) }

// ReadRootConfigMap reads the roots of an istio-ca-root-cert ConfigMap.
func ReadRootConfigMap(cm *corev1.ConfigMap) (*RootConfigMap, error) {
	where := fmt.Sprintf("configmap %s/%s", cm.Namespace, cm.Name)
	data, ok := cm.Data[RootCertKey]
	if !ok {
		return nil, fmt.Errorf("%s: no %s key", where, RootCertKey)
	}
	roots, err := ParseCerts(where+": "+RootCertKey, []byte(data))
	if err != nil {
		return nil, err
	}
	return &RootConfigMap{Namespace: cm.Namespace, Name: cm.Name, Data: data, Roots: roots}, nil
}
