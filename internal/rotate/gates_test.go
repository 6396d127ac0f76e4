package rotate_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// TestRetireRefusedWhileATrustSurfaceLags: before the old root is retired,
// the injection webhook's caBundle must hold the new root, so must any other
// webhook configuration that trusts the old root, and every istiod replica
// must serve from the new intermediate. Each is made to lag in
// turn; the retire is refused naming the object and the fix, nothing is
// written, and once the lag is gone the rotation completes.
func TestRetireRefusedWhileATrustSurfaceLags(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	root := newRoot(t)
	var log bytes.Buffer
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseIssue, &log)).Run(ctx); err != nil {
		t.Fatalf("rotate until issue: %v\n%s", err, log.String())
	}
	oldRoot := mustParse(t, tg.original).Roots[0]

	t.Run("a webhook caBundle without the new root", func(t *testing.T) {
		// A webhook that selects no namespace: the API server never calls it,
		// but its caBundle is a trust surface istiod keeps up to date.
		never := &metav1.LabelSelector{MatchLabels: map[string]string{"meshca.io/never": "true"}}
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name: "rev.namespace.sidecar-injector.istio.io",
				ClientConfig: admissionregistrationv1.WebhookClientConfig{
					Service:  &admissionregistrationv1.ServiceReference{Namespace: sandbox.IstioNamespace, Name: "istiod", Path: ptrTo("/inject")},
					CABundle: pki.EncodeCert(oldRoot),
				},
				NamespaceSelector: never, SideEffects: ptrTo(admissionregistrationv1.SideEffectClassNone), AdmissionReviewVersions: []string{"v1"},
			}},
		}
		mwcs := s.Client().AdmissionregistrationV1().MutatingWebhookConfigurations()
		if _, err := mwcs.Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = mwcs.Delete(ctx, mwc.Name, metav1.DeleteOptions{}) }()
		before := tg.cacerts(t)
		err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx)
		if err == nil {
			got, _ := mwcs.Get(ctx, mwc.Name, metav1.GetOptions{})
			t.Fatalf("retire was not refused (caBundle now %d bytes)\n%s", len(got.Webhooks[0].ClientConfig.CABundle), log.String())
		}
		t.Logf("refused: %v", err)
		for _, want := range []string{"mutatingwebhookconfiguration istio-sidecar-injector", "rev.namespace.sidecar-injector.istio.io", "rollout restart deployment/istiod"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal does not name %q: %v", want, err)
			}
		}
		if !tg.cacerts(t).Equal(before) {
			t.Error("a refused retire changed cacerts")
		}
	})

	t.Run("a webhook istiod does not patch, trusting only the old root", func(t *testing.T) {
		// As a GitOps repository would keep it: a copy of the injector
		// under another name, its caBundle pinned to the root of install
		// time. istiod never updates it. Beside it, a webhook of some
		// other server with its own CA, which the rotation must ignore
		// (it stays until the end, where the rotation completes).
		never := &metav1.LabelSelector{MatchLabels: map[string]string{"meshca.io/never": "true"}}
		hook := func(name, hook string, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
			return &admissionregistrationv1.MutatingWebhookConfiguration{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Webhooks: []admissionregistrationv1.MutatingWebhook{{
					Name: hook,
					ClientConfig: admissionregistrationv1.WebhookClientConfig{
						Service:  &admissionregistrationv1.ServiceReference{Namespace: sandbox.IstioNamespace, Name: "istiod", Path: ptrTo("/inject")},
						CABundle: caBundle,
					},
					NamespaceSelector: never, SideEffects: ptrTo(admissionregistrationv1.SideEffectClassNone), AdmissionReviewVersions: []string{"v1"},
				}},
			}
		}
		other, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		mwcs := s.Client().AdmissionregistrationV1().MutatingWebhookConfigurations()
		if _, err := mwcs.Create(ctx, hook("other-ca-webhook", "mutate.other.example.com", pki.EncodeCert(other.Cert)), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		gitops := hook("gitops-injector", "inject.gitops.example.com", append([]byte("# istiod root at install time\n"), pki.EncodeCert(oldRoot)...))
		if _, err := mwcs.Create(ctx, gitops, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = mwcs.Delete(ctx, gitops.Name, metav1.DeleteOptions{}) }()
		before := tg.cacerts(t)
		err = rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx)
		if err == nil {
			t.Fatalf("retire was not refused with a webhook that trusts only the old root\n%s", log.String())
		}
		t.Logf("refused: %v", err)
		for _, want := range []string{"mutatingwebhookconfiguration gitops-injector", "inject.gitops.example.com", "istiod does not patch it", "istio-ca-root-cert"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal does not name %q: %v", want, err)
			}
		}
		if strings.Contains(err.Error(), "other-ca-webhook") {
			t.Errorf("refusal names a webhook that does not trust the mesh CA: %v", err)
		}
		if !tg.cacerts(t).Equal(before) {
			t.Error("a refused retire changed cacerts")
		}
	})

	t.Run("an istiod replica that does not answer", func(t *testing.T) {
		pods, err := s.Client().CoreV1().Pods(sandbox.IstioNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
		if err != nil || len(pods.Items) == 0 {
			t.Fatalf("istiod pods: %v", err)
		}
		pod := pods.Items[0].Name
		pid := istiodPID(t, s, pod)
		// SIGSTOP freezes the replica: it loads nothing and serves nothing.
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		cont := func() {
			if stopped {
				_ = syscall.Kill(pid, syscall.SIGCONT)
				stopped = false
			}
		}
		defer cont()
		before := tg.cacerts(t)
		err = rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx)
		cont()
		if err == nil {
			t.Fatalf("retire was not refused with a frozen istiod replica\n%s", log.String())
		}
		t.Logf("refused: %v", err)
		for _, want := range []string{"refusing to retire", "pod " + pod, "delete pod"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal does not name %q: %v", want, err)
			}
		}
		if !tg.cacerts(t).Equal(before) {
			t.Error("a refused retire changed cacerts")
		}
	})

	// Nothing lags any more: the rotation completes.
	if err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		return rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx) == nil, nil
	}); err != nil {
		t.Fatalf("the rotation does not complete once nothing lags:\n%s", log.String())
	}
	tg.assertFinal(t, root)
	assertNoFailures(t, s, "retire refused twice, then completed")
}

func ptrTo[T any](v T) *T { return &v }

// istiodPID finds the pilot-discovery process the sandbox runs for pod: its
// command line names the pod's run directory under the sandbox.
func istiodPID(t *testing.T, s *sandbox.Sandbox, pod string) int {
	t.Helper()
	mark := filepath.Join(s.Dir(), "istiod", pod) + string(filepath.Separator)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc to find istiod's process: %v", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), mark) && strings.Contains(string(cmdline), "discovery") {
			return pid
		}
	}
	t.Fatalf("no process of istiod pod %s (%s)", pod, mark)
	return 0
}
