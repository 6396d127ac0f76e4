package preflight

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// CheckWebhookTrust is the check of CategoryWebhooks.
const CheckWebhookTrust = "webhooks that trust the mesh root"

// webhookChecks finds the webhooks whose caBundle holds a root of ca: the
// API server calls their server (istiod, or another server the mesh CA
// certified) trusting only that caBundle. istiod patches its own injector
// and validators at every reload; any other such configuration keeps the
// root it was installed with, and fails every request it matches once a
// rotation retires that root. meshca rotate refuses to retire until it
// holds the new root too; this check names them before a rotation starts.
func webhookChecks(ctx context.Context, cs kubernetes.Interface, ca *mesh.CA) (Category, error) {
	cat := Category{Name: CategoryWebhooks}
	c := Check{Name: CheckWebhookTrust, Status: StatusOK}
	hooks, err := mesh.Webhooks(ctx, cs)
	if err != nil {
		if ctx.Err() != nil {
			return cat, err
		}
		c.Status = StatusWarning
		c.Message = "not checked: " + err.Error()
		c.Hint = "meshca needs list on mutatingwebhookconfigurations and validatingwebhookconfigurations (kubectl auth can-i list mutatingwebhookconfigurations)"
		cat.Checks = append(cat.Checks, c)
		return cat, nil
	}
	roots := pki.Fingerprints(ca.Roots)
	var byIstiod int
	for _, h := range hooks {
		trust := h.Trust()
		var held string
		for _, r := range roots {
			if trust.Has(r) {
				held = r
				break
			}
		}
		switch {
		case held == "":
		case h.Istiod:
			byIstiod++
		default:
			c.Details = append(c.Details, fmt.Sprintf("%s: trusts root %.12s, and istiod does not patch it", h, held))
		}
	}
	if len(c.Details) == 0 {
		c.Message = "no webhook configuration trusts the mesh root"
		if byIstiod > 0 {
			c.Message = fmt.Sprintf("%d webhooks trust the mesh root, all in configurations istiod patches at every CA reload", byIstiod)
		}
		cat.Checks = append(cat.Checks, c)
		return cat, nil
	}
	c.Status = StatusWarning
	c.Message = fmt.Sprintf("%d webhooks trust the mesh root with a caBundle istiod does not update: once a rotation retires that root, the API server rejects their server's certificate and fails every request they match", len(c.Details))
	c.Hint = fmt.Sprintf("during a rotation, after its trust phase, add the new root to their caBundle where they are managed (root-cert.pem of configmap %s/istio-ca-root-cert then holds both roots); meshca rotate refuses to retire the old root until they hold it", ca.Namespace)
	cat.Checks = append(cat.Checks, c)
	return cat, nil
}
