package mesh

import (
	"bytes"
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/proxy"
)

// ServingCA tells which of cacerts and istio-ca-secret istiod serves from,
// when both exist, by the bytes istiod last wrote into istio-ca-root-cert in
// its own namespace: CACertsSecret when they are cacertsRoot,
// SelfSignedSecret when they are selfSignedRoot, "" when neither (or the
// ConfigMap cannot be read).
func ServingCA(ctx context.Context, cs kubernetes.Interface, namespace string, cacertsRoot, selfSignedRoot []byte) string {
	cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, proxy.RootConfigMapName, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	data := []byte(cm.Data[proxy.RootCertKey])
	switch {
	case bytes.Equal(data, cacertsRoot):
		return CACertsSecret
	case bytes.Equal(data, selfSignedRoot):
		return SelfSignedSecret
	}
	return ""
}
