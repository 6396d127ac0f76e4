package preflight

import (
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/pki"
)

// TestWebhooksTrustingTheMeshRoot: of the webhook configurations whose
// caBundle holds the mesh root, only those istiod does not patch are named,
// as a warning with the fix; a webhook of another CA is none of its
// business.
func TestWebhooksTrustingTheMeshRoot(t *testing.T) {
	w := newWorld(t)
	root := pki.EncodeCert(w.root.Cert)
	other, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	mutating := func(name string, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
		return &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "hook." + name + ".example.com", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}}}}
	}
	w.others = append(w.others,
		mutating("istio-sidecar-injector", root),
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-validator-istio-system"},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "rev.validation.istio.io", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: root}}}},
		mutating("gitops-injector", append([]byte("# pinned at install\n"), root...)),
		mutating("cert-manager-webhook", pki.EncodeCert(other.Cert)),
	)
	r := w.run(t, defaults)
	c := mustCheck(t, r, CategoryWebhooks, CheckWebhookTrust)
	t.Logf("%s\n  %s", c, strings.Join(c.Details, "\n  "))
	if c.Status != StatusWarning {
		t.Fatalf("status = %s, want warning", c.Status)
	}
	if len(c.Details) != 1 || !strings.Contains(c.Details[0], "mutatingwebhookconfiguration gitops-injector (webhook hook.gitops-injector.example.com)") {
		t.Errorf("details = %q, want only gitops-injector", c.Details)
	}
	if !strings.Contains(c.Hint, "istio-ca-root-cert") || !strings.Contains(c.Hint, "refuses to retire") {
		t.Errorf("hint does not give the fix: %s", c.Hint)
	}
	if !r.Ready() {
		t.Error("a webhook istiod does not patch blocks the rotation from starting; it only blocks the retire")
	}
}
