package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Names of istiod's sidecar injection as the istiod chart installs it.
const (
	// InjectorName is the MutatingWebhookConfiguration and the ConfigMap
	// holding the injection templates and values.
	InjectorName = "istio-sidecar-injector"
	// injectorWebhook ends in "sidecar-injector.istio.io", the suffix
	// istiod's webhook patcher looks for when it writes the caBundle.
	injectorWebhook = "namespace.sidecar-injector.istio.io"
	// ValidatorName is istiod's ValidatingWebhookConfiguration for the
	// default revision in istio-system.
	ValidatorName = "istio-validator-istio-system"
	// validatorWebhook is the chart's per-revision validation webhook.
	validatorWebhook = "rev.validation.istio.io"
	// alwaysRejectAnnotation makes istiod's validation deny an object
	// whatever it holds (istio's constants.AlwaysReject).
	alwaysRejectAnnotation = "internal.istio.io/webhook-always-reject"
	// SidecarNamespace holds the sidecar workloads of `sandbox up
	// --sidecars N`; it carries istio-injection=enabled.
	SidecarNamespace = "sidecars"
	// LabelInjection is the namespace label that selects injection.
	LabelInjection = "istio-injection"
	// injectorHost is the name the API server dials istiod's webhook by:
	// loopback, and in istiod's serving certificate through
	// ISTIOD_CUSTOM_HOST.
	injectorHost = "localhost"
)

// istioFile reads a file of the pinned istio module: from bin/assets/istio
// (asset name) when hack/controlplane.sh copied it there, else from the
// module cache through tools/go.mod (rel path inside the module).
func (r *runtime) istioFile(asset, rel string) ([]byte, error) {
	p := filepath.Join(r.opts.BinDir, "assets", "istio", asset)
	if b, err := os.ReadFile(p); err == nil {
		return b, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, fmt.Errorf("istio %s: no %s and %w", rel, p, err)
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio")
	cmd.Dir = filepath.Join(root, "tools")
	dir, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("istio %s: no %s, and the istio module of tools/ is not in the module cache (%w)", rel, p, err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(dir)), rel))
	if err != nil {
		return nil, fmt.Errorf("istio %s: %w", rel, err)
	}
	return b, nil
}

// injectorConfigMap renders the istio-sidecar-injector ConfigMap as the
// istiod chart does with its default values: "config" holds the sidecar
// template of the pinned istio (files/injection-template.yaml) and
// "values" the chart values the template reads.
func (r *runtime) injectorConfigMap() (*corev1.ConfigMap, error) {
	const chart = "manifests/charts/istio-control/istio-discovery/"
	tmpl, err := r.istioFile("injection-template.yaml", chart+"files/injection-template.yaml")
	if err != nil {
		return nil, err
	}
	rawValues, err := r.istioFile("istio-discovery-values.yaml", chart+"values.yaml")
	if err != nil {
		return nil, err
	}
	var all map[string]any
	if err := yaml.Unmarshal(rawValues, &all); err != nil {
		return nil, fmt.Errorf("istiod chart values: %w", err)
	}
	if d, ok := all["_internal_defaults_do_not_set"].(map[string]any); ok {
		all = d
	}
	pick := func(m any, keys ...string) map[string]any {
		out := map[string]any{}
		if mm, ok := m.(map[string]any); ok {
			for _, k := range keys {
				if v, ok := mm[k]; ok {
					out[k] = v
				}
			}
		}
		return out
	}
	vals := pick(all, "global", "sidecarInjectorWebhook", "revision")
	vals["pilot"] = pick(all, "cni", "env")
	vals["gateways"] = pick(all["gateways"], "securityContext", "seccompProfile")
	values, err := json.MarshalIndent(vals, "", "  ")
	if err != nil {
		return nil, err
	}
	var config strings.Builder
	config.WriteString("defaultTemplates: [sidecar]\npolicy: enabled\nalwaysInjectSelector: []\nneverInjectSelector: []\ninjectedAnnotations: {}\n")
	config.WriteString("template: \"{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}\"\ntemplates:\n  sidecar: |\n")
	for line := range strings.SplitSeq(strings.TrimSpace(string(tmpl)), "\n") {
		config.WriteString("    " + line + "\n")
	}
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Namespace: IstioNamespace, Labels: map[string]string{"istio.io/rev": "default", "app.kubernetes.io/name": "istiod"}},
		Data:       map[string]string{"config": config.String(), "values": string(values)},
	}, nil
}

// installInjection registers istiod's injection as the chart does: the
// template ConfigMap (before istiod starts: istiod only serves injection
// when it finds it) and the MutatingWebhookConfiguration, whose URL reaches
// the istiod webhook front on loopback and whose caBundle istiod patches
// itself.
func (r *runtime) installInjection(ctx context.Context, c kubernetes.Interface) error {
	cm, err := r.injectorConfigMap()
	if err != nil {
		return err
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", IstioNamespace, err)
	}
	if _, err := c.CoreV1().ConfigMaps(IstioNamespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create configmap %s/%s: %w", IstioNamespace, InjectorName, err)
	}
	url := fmt.Sprintf("https://%s:%d/inject", injectorHost, r.hooks.port())
	wh := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: InjectorName, Labels: map[string]string{"istio.io/rev": "default", "app": "sidecar-injector"}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    injectorWebhook,
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules:                   []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create}, Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1beta1", "v1"},
			TimeoutSeconds:          ptr.To(int32(10)),
			ReinvocationPolicy:      ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{LabelInjection: "enabled"}},
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "sidecar.istio.io/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"}},
			}},
		}},
	}
	if _, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, wh, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create mutatingwebhookconfiguration %s: %w", InjectorName, err)
	}
	return r.installValidation(ctx, c)
}

// installValidation registers istiod's config validation webhook as the
// istiod chart does (templates/validatingwebhookconfiguration.yaml): fail
// open, no caBundle. istiod's validation controller patches the caBundle
// into every configuration labelled with its revision and switches it to
// fail closed once a dry run of an invalid Gateway is denied through it.
func (r *runtime) installValidation(ctx context.Context, c kubernetes.Interface) error {
	url := fmt.Sprintf("https://%s:%d/validate", injectorHost, r.hooks.port())
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: ValidatorName, Labels: map[string]string{"istio.io/rev": "default", "app": "istiod", "istio": "istiod"}},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:         validatorWebhook,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule: admissionregistrationv1.Rule{
					APIGroups:   []string{"security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"},
					APIVersions: []string{"*"}, Resources: []string{"*"},
				},
			}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "istio.io/rev", Operator: metav1.LabelSelectorOpIn, Values: []string{"default"}},
			}},
		}},
	}
	if _, err := c.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create validatingwebhookconfiguration %s: %w", ValidatorName, err)
	}
	return nil
}

// installSidecars creates n sidecar workloads (a Deployment and
// ServiceAccount each) in SidecarNamespace, labelled for injection: their
// pods get istio-proxy from istiod's webhook, with whatever mesh config
// istiod has at that moment.
func installSidecars(ctx context.Context, c kubernetes.Interface, n int, grace time.Duration) error {
	if n <= 0 {
		return nil
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SidecarNamespace, Labels: map[string]string{LabelInjection: "enabled"}}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", SidecarNamespace, err)
	}
	for i := range n {
		name := fmt.Sprintf("sidecar-%d", i)
		if _, err := c.CoreV1().ServiceAccounts(SidecarNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create serviceaccount %s/%s: %w", SidecarNamespace, name, err)
		}
		d := deployment(SidecarNamespace, name, 1, map[string]string{"app": name}, corev1.Container{Name: "app", Image: "registry.k8s.io/pause:3.10"}, name)
		d.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(grace / time.Second))
		d.Spec.Template.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: ProxyReadyGate}}
		if _, err := c.AppsV1().Deployments(SidecarNamespace).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create deployment %s/%s: %w", SidecarNamespace, name, err)
		}
	}
	return nil
}

// admissionInterval is how often the admission check sends its throwaway
// objects.
const admissionInterval = 2 * time.Second

// gatewayResource is istio's Gateway, the kind istiod's validation
// controller sends through its own webhook to prove it answers.
var gatewayResource = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}

// checkAdmission sends two throwaway objects through istiod's webhooks every
// admissionInterval, as dry runs (admitted through every webhook, stored
// nowhere), and tells the sink the result of each:
//   - a pod in SidecarNamespace, which must come back with the istio-proxy
//     container injected;
//   - an invalid Gateway (no servers, istio's always-reject annotation, the
//     revision label), which istiod's validation webhook must deny. An
//     invalid object admitted means the API server could not reach the
//     webhook and failed open.
//
// A stale caBundle after a rotation's retire would make exactly these fail.
// Each check counts once it has passed a first time: istiod patches the
// caBundles a moment after it starts.
func (r *runtime) checkAdmission(ctx context.Context) {
	dyn, err := dynamic.NewForConfig(r.cluster.RESTConfig())
	if err != nil {
		r.opts.Logf("admission check: %v", err)
		return
	}
	checks := []func(context.Context) error{r.checkInjection, func(ctx context.Context) error { return checkValidation(ctx, dyn) }}
	counting := make([]bool, len(checks))
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		for i, check := range checks {
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			err := check(cctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if !counting[i] {
				if counting[i] = err == nil; !counting[i] {
					continue
				}
			}
			r.data.admissionChecked(err)
		}
	}, admissionInterval)
}

// checkInjection creates a pod in SidecarNamespace (dry run) and checks that
// istiod's injection webhook added the istio-proxy container.
func (r *runtime) checkInjection(ctx context.Context) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "admission-check-", Namespace: SidecarNamespace},
		Spec: corev1.PodSpec{
			Containers:  []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
	got, err := r.client.CoreV1().Pods(SidecarNamespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return fmt.Errorf("create pod in %s (dry run) through the injection webhook: %w", SidecarNamespace, err)
	}
	if !hasContainer(got, proxyContainer) {
		return fmt.Errorf("pod %s/%s admitted without %s: istiod's injection webhook did not run", SidecarNamespace, got.Name, proxyContainer)
	}
	return nil
}

// checkValidation creates an invalid Gateway (dry run) and checks that
// istiod's validation webhook denied it.
func checkValidation(ctx context.Context, dyn dynamic.Interface) error {
	gw := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
		"metadata": map[string]any{
			"generateName": "admission-check-", "namespace": SidecarNamespace,
			"labels":      map[string]any{"istio.io/rev": "default"},
			"annotations": map[string]any{alwaysRejectAnnotation: "true"},
		},
		"spec": map[string]any{},
	}}
	_, err := dyn.Resource(gatewayResource).Namespace(SidecarNamespace).Create(ctx, gw, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err == nil:
		return fmt.Errorf("invalid gateway in %s admitted (dry run): the API server did not reach istiod's validation webhook %s and failed open", SidecarNamespace, ValidatorName)
	case strings.Contains(err.Error(), "denied the request"):
		return nil
	default:
		return fmt.Errorf("create gateway in %s (dry run) through the validation webhook: %w", SidecarNamespace, err)
	}
}
