package rotate

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/internal/mesh"
)

func TestMissingCACertsIsExplainedByWhatTheNamespaceHolds(t *testing.T) {
	selfSigned := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: mesh.SelfSignedSecret}}
	tests := map[string]struct {
		namespace string
		want      string
	}{
		"the Istio namespace with istiod's self-signed CA": {"istio-system", "istiod uses its self-signed CA"},
		"a namespace without istiod (-n default)":          {"default", "no istiod CA in namespace default; pass -n with the namespace istiod runs in"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := store{client: fake.NewClientset(selfSigned), namespace: tc.namespace}
			_, _, err := s.readCACerts(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
