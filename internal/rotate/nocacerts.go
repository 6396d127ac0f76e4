package rotate

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/mesh"
)

// noCACerts explains a missing cacerts: istiod's self-signed CA only when
// its secret is there; otherwise this is most likely not the Istio namespace.
func (s store) noCACerts(ctx context.Context) error {
	_, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, mesh.SelfSignedSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		return fmt.Errorf("secret %s/%s not found: %w (secret %s); meshca rotate --root DIR migrates it to a plug-in CA", s.namespace, CACertsSecret, errSelfSigned, mesh.SelfSignedSecret)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("neither secret %s/%s nor %s/%s exists: no istiod CA in namespace %s; pass -n with the namespace istiod runs in", s.namespace, CACertsSecret, s.namespace, mesh.SelfSignedSecret, s.namespace)
	}
	return fmt.Errorf("secret %s/%s not found, and reading %s/%s failed: %w", s.namespace, CACertsSecret, s.namespace, mesh.SelfSignedSecret, err)
}
