package preflight

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

func ptr[T any](v T) *T { return &v }

// world is an Istio ambient install as the Helm charts and istiod's
// controllers name things; tests change it before building the clientset.
type world struct {
	root, inter *pki.CA
	bundle      *bundle.Bundle

	istiod  *appsv1.Deployment
	meshCM  *corev1.ConfigMap
	ztunnel *appsv1.DaemonSet
	cacerts *corev1.Secret
	// selfSigned replaces cacerts when set.
	selfSigned *corev1.Secret
	rootCMs    []*corev1.ConfigMap
	pods       []*corev1.Pod
	others     []runtime.Object
}

var created = metav1.NewTime(pkitest.Now.Add(-24 * time.Hour))

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{root: pkitest.Root(t, pki.ECDSAP256)}
	w.inter = pkitest.Intermediate(t, w.root, pki.ECDSAP256, "c1")
	w.bundle = pkitest.Bundle(t, w.root, w.inter)
	w.istiod = &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Labels: map[string]string{mesh.LabelApp: mesh.IstiodApp, "istio.io/rev": "default"}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(2)), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: mesh.IstiodContainer, Image: "docker.io/istio/pilot:1.28.1",
			Env: []corev1.EnvVar{{Name: "PILOT_ENABLE_AMBIENT", Value: "true"}, {Name: mesh.EnvMultiRoot, Value: "true"}},
		}}}}},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 2},
	}
	w.meshCM = &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: mesh.MeshConfigMapName},
		Data:       map[string]string{mesh.MeshConfigKey: "trustDomain: cluster.local\ndefaultConfig:\n  proxyMetadata:\n    PROXY_CONFIG_XDS_AGENT: \"true\"\n"},
	}
	w.ztunnel = &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel", Labels: map[string]string{mesh.LabelApp: mesh.ZtunnelApp}},
		Spec: appsv1.DaemonSetSpec{
			// The Istio chart's strategy: a restart refuses no new connection.
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType, RollingUpdate: &appsv1.RollingUpdateDaemonSet{
				MaxSurge: &intstr.IntOrString{IntVal: 1}, MaxUnavailable: &intstr.IntOrString{IntVal: 0},
			}},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "istio-proxy", Image: "docker.io/istio/ztunnel:1.28.1",
			}}}},
		},
		Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberReady: 2},
	}
	w.cacerts = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: mesh.CACertsSecret}, Data: w.bundle.SecretData()}
	for _, ns := range []string{"ambient", "bookinfo", "istio-system"} {
		w.rootCMs = append(w.rootCMs, rootCM(ns, string(w.bundle.RootCert)))
	}
	zt := map[string]string{mesh.LabelApp: mesh.ZtunnelApp}
	w.pods = []*corev1.Pod{
		pod("istio-system", "ztunnel-a", zt, "DaemonSet/ztunnel"),
		pod("istio-system", "ztunnel-b", zt, "DaemonSet/ztunnel"),
		pod("ambient", "waypoint-6c7f8-q2x", map[string]string{mesh.LabelManaged: mesh.ManagedWaypoint}, "ReplicaSet/waypoint-6c7f8", withProxy(true)),
		pod("istio-system", "istio-ingressgateway-7b9-abc", map[string]string{mesh.LabelIstio: "ingressgateway"}, "ReplicaSet/istio-ingressgateway-7b9", withProxy(true)),
		pod("bookinfo", "reviews-v1-5d8-abc", nil, "ReplicaSet/reviews-v1-5d8", withProxy(true)),
		pod("ambient", "app-0-xyz", nil, "ReplicaSet/app-0-6f9"),
	}
	w.others = []runtime.Object{
		replicaSet("ambient", "waypoint-6c7f8", "waypoint"),
		replicaSet("istio-system", "istio-ingressgateway-7b9", "istio-ingressgateway"),
		replicaSet("bookinfo", "reviews-v1-5d8", "reviews-v1"),
	}
	return w
}

func rootCM(ns, data string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": data}}
}

func withProxy(xdsAgent bool) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		c := corev1.Container{Name: mesh.ProxyContainer, Image: "docker.io/istio/proxyv2:1.28.1"}
		if xdsAgent {
			c.Env = []corev1.EnvVar{{Name: mesh.EnvXDSAgent, Value: "true"}}
		}
		p.Spec.Containers = append(p.Spec.Containers, c)
	}
}

func pod(ns, name string, labels map[string]string, owner string, opts ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, CreationTimestamp: created},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "main", Image: "app:1"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if kind, oname, ok := strings.Cut(owner, "/"); ok {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: oname, Controller: ptr(true)}}
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func replicaSet(ns, name, deployment string) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: deployment, Controller: ptr(true)}}}}
}

func (w *world) objects() []runtime.Object {
	var objs []runtime.Object
	for _, o := range []runtime.Object{w.istiod, w.meshCM, w.ztunnel, w.cacerts, w.selfSigned} {
		switch v := o.(type) {
		case *appsv1.Deployment:
			if v != nil {
				objs = append(objs, v)
			}
		case *corev1.ConfigMap:
			if v != nil {
				objs = append(objs, v)
			}
		case *appsv1.DaemonSet:
			if v != nil {
				objs = append(objs, v)
			}
		case *corev1.Secret:
			if v != nil {
				objs = append(objs, v)
			}
		}
	}
	for _, cm := range w.rootCMs {
		objs = append(objs, cm)
	}
	for _, p := range w.pods {
		objs = append(objs, p)
	}
	return append(objs, w.others...)
}

func (w *world) run(t *testing.T, opts Options) *Report {
	t.Helper()
	if opts.Now.IsZero() {
		opts.Now = pkitest.Now
	}
	r, err := Run(context.Background(), fake.NewClientset(w.objects()...), opts)
	if err != nil {
		t.Fatalf("Run() error = %v", err)
	}
	return r
}

// defaults are the thresholds of `meshca check`.
var defaults = Options{WarnDays: DefaultWarnDays, CriticalDays: DefaultCriticalDays}

// statuses summarises a report as "category/check" → status.
func statuses(r *Report) map[string]Status {
	out := map[string]Status{}
	for _, cat := range r.Categories {
		for _, c := range cat.Checks {
			out[cat.Name+"/"+c.Name] = c.Status
		}
	}
	return out
}

func mustCheck(t *testing.T, r *Report, category, name string) Check {
	t.Helper()
	c, ok := r.Check(category, name)
	if !ok {
		var have []string
		for k := range statuses(r) {
			have = append(have, k)
		}
		t.Fatalf("no check %s/%s; have %v", category, name, have)
	}
	return c
}

func TestHealthyInstallPassesEveryCheck(t *testing.T) {
	w := newWorld(t)
	r := w.run(t, defaults)
	for name, s := range statuses(r) {
		if s != StatusOK {
			c, _ := r.Check(strings.SplitN(name, "/", 2)[0], strings.SplitN(name, "/", 2)[1])
			t.Errorf("%s = %s, want ok: %s", name, s, c)
		}
	}
	var cats []string
	for _, c := range r.Categories {
		cats = append(cats, c.Name)
	}
	want := []string{CategoryIstiod, CategoryMeshConfig, CategoryZtunnel, CategoryCA, CategoryExpiry, CategoryRootConfigMaps, CategoryWebhooks}
	if diff := cmp.Diff(want, cats); diff != "" {
		t.Errorf("categories mismatch (-want +got):\n%s", diff)
	}
	if !r.Ready() || r.HasWarnings() || r.PastThreshold() || r.Err() != nil {
		t.Errorf("Ready() = %v, HasWarnings() = %v, PastThreshold() = %v, Err() = %v; want true, false, false, nil", r.Ready(), r.HasWarnings(), r.PastThreshold(), r.Err())
	}
	if got := len(r.Categories[4].Checks); got != 2 {
		t.Errorf("expiry checks = %d, want 2 (root and intermediate)", got)
	}
	notes := mustCheck(t, r, CategoryCA, CheckCACertsValid).Details
	if len(notes) != 1 || !strings.Contains(notes[0], "tools/certs layout") {
		t.Errorf("cacerts valid details = %q, want the note about the root in cert-chain.pem", notes)
	}
}

func TestFindings(t *testing.T) {
	tests := map[string]struct {
		change func(t *testing.T, w *world)
		opts   Options
		// want maps "category/check" to the expected status; only those are
		// compared.
		want     map[string]Status
		contains map[string][]string // "category/check" → substrings of message, hint and details
		ready    bool
		past     bool
	}{
		"ISTIO_MULTIROOT_MESH off is an error with the Helm and IstioOperator values": {
			change: func(_ *testing.T, w *world) {
				w.istiod.Spec.Template.Spec.Containers[0].Env[1].Value = "false"
			},
			want: map[string]Status{"istiod/" + CheckMultiRoot: StatusError},
			contains: map[string][]string{"istiod/" + CheckMultiRoot: {
				"ISTIO_MULTIROOT_MESH is not true on istio-system/istiod",
				"--set pilot.env.ISTIO_MULTIROOT_MESH=true",
				"--set env.ISTIO_MULTIROOT_MESH=true",
				`values.pilot.env.ISTIO_MULTIROOT_MESH: "true"`,
			}, "mesh-config/" + CheckMeshXDSAgent: {"only once istiod has ISTIO_MULTIROOT_MESH=true"}},
		},
		"ISTIO_MULTIROOT_MESH unset is off too": {
			change: func(_ *testing.T, w *world) { w.istiod.Spec.Template.Spec.Containers[0].Env = nil },
			want:   map[string]Status{"istiod/" + CheckMultiRoot: StatusError},
		},
		"no istiod is an error naming the namespace": {
			change: func(_ *testing.T, w *world) { w.istiod = nil },
			want:   map[string]Status{"istiod/" + CheckIstiodFound: StatusError},
			contains: map[string][]string{"istiod/" + CheckIstiodFound: {
				"no istiod Deployment (label app=istiod) in namespace istio-system", "-n",
			}},
		},
		"an istiod without a ready replica is an error": {
			change: func(_ *testing.T, w *world) { w.istiod.Status.ReadyReplicas = 0 },
			want:   map[string]Status{"istiod/" + CheckIstiodFound: StatusError},
			contains: map[string][]string{"istiod/" + CheckIstiodFound: {
				"0/2 ready", "kubectl -n istio-system rollout status deployment/istiod",
			}},
		},
		"istiod before 1.19 is a warning": {
			change: func(_ *testing.T, w *world) { w.istiod.Spec.Template.Spec.Containers[0].Image = "istio/pilot:1.18.2" },
			want:   map[string]Status{"istiod/" + CheckIstiodVersion: StatusWarning},
			ready:  true,
		},
		"mesh config without PROXY_CONFIG_XDS_AGENT is a warning with the value to set": {
			change: func(_ *testing.T, w *world) {
				w.meshCM.Data[mesh.MeshConfigKey] = "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n"
			},
			want:  map[string]Status{"mesh-config/" + CheckMeshXDSAgent: StatusWarning, "mesh-config/" + CheckEnvoyXDSAgent: StatusOK},
			ready: true,
			contains: map[string][]string{"mesh-config/" + CheckMeshXDSAgent: {
				`meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT: "true"`, "configmap istio-system/istio",
			}},
		},
		"without the mesh config value every envoy pod lacks it, and the fix starts there": {
			change: func(_ *testing.T, w *world) {
				w.meshCM.Data[mesh.MeshConfigKey] = "{}"
				w.pods = append(w.pods, pod("bookinfo", "ratings-v1-7c9-old", nil, "StatefulSet/ratings", withProxy(false)))
			},
			want:  map[string]Status{"mesh-config/" + CheckMeshXDSAgent: StatusWarning, "mesh-config/" + CheckEnvoyXDSAgent: StatusWarning},
			ready: true,
			contains: map[string][]string{"mesh-config/" + CheckEnvoyXDSAgent: {
				"1 of 4 envoy proxies lack PROXY_CONFIG_XDS_AGENT=true: the rotation will restart them",
				"set the mesh config value first",
				"kubectl -n bookinfo rollout restart statefulset/ratings",
			}},
		},
		"no mesh config ConfigMap is a warning": {
			change: func(_ *testing.T, w *world) { w.meshCM = nil },
			want:   map[string]Status{"mesh-config/" + CheckMeshXDSAgent: StatusWarning},
			ready:  true,
		},
		"envoy pods created before PROXY_CONFIG_XDS_AGENT are listed with their restarts": {
			change: func(_ *testing.T, w *world) {
				w.pods = append(w.pods,
					pod("bookinfo", "ratings-v1-7c9-old", nil, "ReplicaSet/ratings-v1-7c9", withProxy(false)),
					pod("edge", "public-istio-5f6-xyz", map[string]string{mesh.LabelManaged: mesh.ManagedGateway}, "", withProxy(false)),
					pod("bookinfo", "details-v1-gone", nil, "", withProxy(false), func(p *corev1.Pod) { p.DeletionTimestamp = &created }),
				)
				w.others = append(w.others, replicaSet("bookinfo", "ratings-v1-7c9", "ratings-v1"))
			},
			want:  map[string]Status{"mesh-config/" + CheckEnvoyXDSAgent: StatusWarning},
			ready: true,
			contains: map[string][]string{"mesh-config/" + CheckEnvoyXDSAgent: {
				"2 of 5 envoy proxies lack PROXY_CONFIG_XDS_AGENT=true",
				"gateway edge/public-istio-5f6-xyz (created 2026-10-31T12:00:00Z)",
				"sidecar bookinfo/ratings-v1-7c9-old (Deployment/ratings-v1, created 2026-10-31T12:00:00Z)",
				"kubectl -n bookinfo rollout restart deployment/ratings-v1",
				"kubectl -n edge delete pod public-istio-5f6-xyz",
			}},
		},
		"incomplete cacerts is an error naming the missing key": {
			change: func(_ *testing.T, w *world) { delete(w.cacerts.Data, bundle.CAKeyFile) },
			want:   map[string]Status{"ca/" + CheckCAMode: StatusOK, "ca/" + CheckCACertsComplete: StatusError},
			contains: map[string][]string{"ca/" + CheckCACertsComplete: {
				"secret istio-system/cacerts is incomplete: missing ca-key.pem;", "incomplete signing CA bundle detected",
				"--from-file=ca-key.pem",
			}},
		},
		"cacerts whose key does not match is refused as istiod refuses it": {
			change: func(t *testing.T, w *world) {
				other := pkitest.Intermediate(t, w.root, pki.ECDSAP256, "c2")
				w.cacerts.Data[bundle.CAKeyFile] = pkitest.Bundle(t, w.root, other).CAKey
			},
			want: map[string]Status{"ca/" + CheckCACertsValid: StatusError},
			contains: map[string][]string{"ca/" + CheckCACertsValid: {
				"istiod would refuse it", "ca-key.pem]: private key does not match",
			}},
		},
		"malformed root-cert.pem names the key": {
			change: func(_ *testing.T, w *world) {
				w.cacerts.Data[bundle.RootCertFile] = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
			},
			want:     map[string]Status{"ca/" + CheckCACertsValid: StatusError},
			contains: map[string][]string{"ca/" + CheckCACertsValid: {"secret istio-system/cacerts[root-cert.pem]"}},
		},
		"the tls.crt/ca.crt layout is refused with the keys to use": {
			change: func(_ *testing.T, w *world) {
				w.cacerts.Data = map[string][]byte{"tls.crt": w.bundle.CACert, "tls.key": w.bundle.CAKey, "ca.crt": w.bundle.RootCert}
			},
			want: map[string]Status{"ca/" + CheckCACertsComplete: StatusError},
			contains: map[string][]string{"ca/" + CheckCACertsComplete: {
				"uses the tls.crt/tls.key/ca.crt layout", "ca-key.pem = tls.key",
			}},
		},
		"the self-signed istio-ca-secret is migrated with one istiod restart": {
			change: func(_ *testing.T, w *world) {
				w.cacerts = nil
				w.selfSigned = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: mesh.SelfSignedSecret},
					Data: map[string][]byte{"ca-cert.pem": pki.EncodeCert(w.root.Cert), "ca-key.pem": []byte("k"), "cert-chain.pem": nil, "root-cert.pem": nil}}
				for _, cm := range w.rootCMs {
					cm.Data["root-cert.pem"] = string(pki.EncodeCert(w.root.Cert))
				}
			},
			want: map[string]Status{"ca/" + CheckCAMode: StatusOK, "ca-expiry/root <root>": StatusOK, "root-configmaps/" + CheckRootConfigMaps: StatusOK},
			contains: map[string][]string{"ca/" + CheckCAMode: {
				"self-signed CA: istiod signs with secret istio-system/istio-ca-secret",
				"meshca rotate --root DIR migrates it to a plug-in CA in phases",
				"(istio#57853)",
			}},
			ready: true,
		},
		"no CA secret at all is an error": {
			change: func(_ *testing.T, w *world) { w.cacerts = nil },
			want:   map[string]Status{"ca/" + CheckCAMode: StatusError},
			contains: map[string][]string{"ca/" + CheckCAMode: {
				"neither secret istio-system/cacerts nor istio-system/istio-ca-secret exists",
			}},
		},
		"a stale istio-ca-root-cert is a warning naming the namespace": {
			change: func(t *testing.T, w *world) {
				w.rootCMs[1].Data["root-cert.pem"] = string(pki.EncodeCert(pkitest.Root(t, pki.ECDSAP256).Cert))
				w.rootCMs[0].Data["root-cert.pem"] += "\n"
			},
			want:  map[string]Status{"root-configmaps/" + CheckRootConfigMaps: StatusWarning},
			ready: true,
			contains: map[string][]string{"root-configmaps/" + CheckRootConfigMaps: {
				"2 of 3 namespaces do not carry the bytes of secret istio-system/cacerts[root-cert.pem]",
				"ambient: same roots but not the bytes",
				"bookinfo: missing root ", "; extra root ",
				"kubectl -n istio-system rollout restart deployment/istiod",
			}},
		},
		"no istio-ca-root-cert at all is a warning": {
			change: func(_ *testing.T, w *world) { w.rootCMs = nil },
			want:   map[string]Status{"root-configmaps/" + CheckRootConfigMaps: StatusWarning},
			ready:  true,
		},
		"mid-rotation: two roots, a duplicate, are fine": {
			change: func(t *testing.T, w *world) {
				newRoot := pki.EncodeCert(pkitest.Root(t, pki.ECDSAP256).Cert)
				w.cacerts.Data[bundle.RootCertFile] = append(append(append([]byte(nil), w.bundle.RootCert...), newRoot...), newRoot...)
				for _, cm := range w.rootCMs {
					cm.Data["root-cert.pem"] = string(w.cacerts.Data[bundle.RootCertFile])
				}
			},
			want: map[string]Status{"ca/" + CheckCACertsValid: StatusOK, "root-configmaps/" + CheckRootConfigMaps: StatusOK},
			contains: map[string][]string{"ca/" + CheckCACertsValid: {
				"holds 1 duplicate root(s)",
			}},
			ready: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			tc.change(t, w)
			opts := tc.opts
			if opts.WarnDays == 0 && opts.CriticalDays == 0 {
				opts = defaults
			}
			r := w.run(t, opts)
			got := statuses(r)
			for key, want := range tc.want {
				key = strings.Replace(key, "<root>", pki.ShortFingerprint(w.root.Cert), 1)
				if got[key] != want {
					cat, check, _ := strings.Cut(key, "/")
					c, _ := r.Check(cat, check)
					t.Errorf("%s = %q, want %q: %s", key, got[key], want, c)
				}
			}
			for key, subs := range tc.contains {
				cat, check, _ := strings.Cut(key, "/")
				c := mustCheck(t, r, cat, check)
				text := c.Message + "\n" + c.Hint + "\n" + strings.Join(c.Details, "\n")
				for _, s := range subs {
					if !strings.Contains(text, s) {
						t.Errorf("%s does not say %q:\n%s", key, s, text)
					}
				}
			}
			if r.Ready() != tc.ready {
				t.Errorf("Ready() = %v, want %v; errors: %v", r.Ready(), tc.ready, r.Errors())
			}
			if r.PastThreshold() != tc.past {
				t.Errorf("PastThreshold() = %v, want %v", r.PastThreshold(), tc.past)
			}
			if !tc.ready && !errors.Is(r.Err(), ErrNotReady) {
				t.Errorf("Err() = %v, want ErrNotReady", r.Err())
			}
		})
	}
}

func TestZtunnelVersions(t *testing.T) {
	tests := map[string]struct {
		image        string
		roots        Status
		rootsMessage string
		reload       string
	}{
		"1.25.1 has the multi-root regression": {
			image: "docker.io/istio/ztunnel:1.25.1", roots: StatusError,
			rootsMessage: "ztunnel 1.25.1 trusts only one root: upgrade to ≥1.26 before rotating (1.25.0 to 1.25.2 carry the multi-root regression istio#55793",
		},
		"1.25.3 has the fix":           {image: "docker.io/istio/ztunnel:1.25.3", roots: StatusOK, reload: "loads istiod's root only at start"},
		"1.24.6 has the backport":      {image: "docker.io/istio/ztunnel:1.24.6", roots: StatusOK},
		"1.24.5 trusts one root":       {image: "docker.io/istio/ztunnel:1.24.5", roots: StatusError, rootsMessage: "ztunnel 1.24.5 trusts only one root: upgrade to ≥1.26 before rotating"},
		"1.23 trusts one root":         {image: "ztunnel:1.23.4-distroless", roots: StatusError},
		"1.26.0 trusts several":        {image: "docker.io/istio/ztunnel:1.26.0", roots: StatusOK, reload: "ztunnel 1.26.0 loads istiod's root only at start"},
		"1.28.1-distroless":            {image: "docker.io/istio/ztunnel:1.28.1-distroless", roots: StatusOK, reload: "the rotation restarts ztunnel"},
		"1.30.0 reloads istiod's root": {image: "docker.io/istio/ztunnel:1.30.0", roots: StatusOK, reload: "ztunnel 1.30.0 re-reads istiod's root when istio-ca-root-cert changes (CA_CERT_WATCHER, ztunnel#1775)"},
		"1.28.6 has CA_CERT_WATCHER":   {image: "docker.io/istio/ztunnel:1.28.6", roots: StatusOK, reload: "ztunnel 1.28.6 re-reads istiod's root"},
		"1.28.5 has not":               {image: "docker.io/istio/ztunnel:1.28.5", roots: StatusOK, reload: "ztunnel 1.28.5 loads istiod's root only at start (CA_CERT_WATCHER came with 1.28.6, 1.29.2 and 1.30.0)"},
		"1.29.1 has not":               {image: "docker.io/istio/ztunnel:1.29.1", roots: StatusOK, reload: "loads istiod's root only at start"},
		"1.29.2 has CA_CERT_WATCHER":   {image: "docker.io/istio/ztunnel:1.29.2", roots: StatusOK, reload: "re-reads"},
		"a 2.x ztunnel is new enough":  {image: "ztunnel:2.0.0", roots: StatusOK, reload: "re-reads"},
		"latest cannot be judged": {
			image: "docker.io/istio/ztunnel:latest", roots: StatusWarning,
			rootsMessage: "cannot tell the version of ztunnel from image docker.io/istio/ztunnel:latest (tag latest)", reload: "version unknown",
		},
		"a digest cannot be judged": {
			image: "docker.io/istio/ztunnel@sha256:0123abcd", roots: StatusWarning, rootsMessage: "(tag none)",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			w.ztunnel.Spec.Template.Spec.Containers[0].Image = tc.image
			r := w.run(t, defaults)
			roots := mustCheck(t, r, CategoryZtunnel, CheckZtunnelRoots)
			if roots.Status != tc.roots {
				t.Errorf("status = %s, want %s: %s", roots.Status, tc.roots, roots)
			}
			if !strings.Contains(roots.Message, tc.rootsMessage) {
				t.Errorf("message = %q, want it to contain %q", roots.Message, tc.rootsMessage)
			}
			if roots.Status == StatusError && (!strings.Contains(roots.Hint, "helm upgrade ztunnel istio/ztunnel -n istio-system") || r.Ready()) {
				t.Errorf("an old ztunnel must make the mesh not ready with the upgrade as hint: %s", roots)
			}
			reload := mustCheck(t, r, CategoryZtunnel, CheckZtunnelReload)
			if reload.Status != StatusOK || !strings.Contains(reload.Message, tc.reload) {
				t.Errorf("reload = %s, want ok saying %q", reload, tc.reload)
			}
		})
	}
}

func TestNoZtunnel(t *testing.T) {
	w := newWorld(t)
	w.ztunnel = nil
	r := w.run(t, defaults)
	c := mustCheck(t, r, CategoryZtunnel, CheckZtunnelFound)
	if c.Status != StatusWarning || len(c.Details) != 2 {
		t.Errorf("ztunnel pods without DaemonSet: %s %v, want a warning listing 2 pods", c, c.Details)
	}
	w.pods = w.pods[2:]
	r = w.run(t, defaults)
	if c := mustCheck(t, r, CategoryZtunnel, CheckZtunnelFound); c.Status != StatusOK || !strings.Contains(c.Message, "not an ambient mesh") {
		t.Errorf("sidecar-only mesh: %s, want ok", c)
	}
}

func TestExpiryThresholds(t *testing.T) {
	days := func(n float64) time.Duration { return time.Duration(n * 24 * float64(time.Hour)) }
	tests := map[string]struct {
		// before is how long before the intermediate's NotAfter the check
		// runs (negative: after).
		before       time.Duration
		opts         Options
		intermediate Status
		message      string
		ready, past  bool
	}{
		"far from expiry":                                         {before: days(400), opts: defaults, intermediate: StatusOK, message: "in 400 days", ready: true},
		"within warn-days is a warning":                           {before: days(60), opts: defaults, intermediate: StatusWarning, message: "in 60 days (warning: within 90)", ready: true, past: true},
		"just inside warn-days":                                   {before: days(89.5), opts: defaults, intermediate: StatusWarning, message: "in 89 days", ready: true, past: true},
		"within critical-days is an error":                        {before: days(10), opts: defaults, intermediate: StatusError, message: "in 10 days (critical: within 30)"},
		"expired is an error":                                     {before: -time.Hour, opts: defaults, intermediate: StatusError, message: "expired on"},
		"custom thresholds":                                       {before: days(100), opts: Options{WarnDays: 200, CriticalDays: 120}, intermediate: StatusError, message: "(critical: within 120)"},
		"no thresholds (the rotation engine): only expiry counts": {before: days(5), opts: Options{}, intermediate: StatusOK, ready: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			opts := tc.opts
			opts.Now = w.inter.Cert.NotAfter.Add(-tc.before)
			r := w.run(t, opts)
			inter := mustCheck(t, r, CategoryExpiry, "intermediate "+pki.ShortFingerprint(w.inter.Cert))
			if inter.Status != tc.intermediate || !strings.Contains(inter.Message, tc.message) {
				t.Errorf("intermediate = %s, want %s saying %q", inter, tc.intermediate, tc.message)
			}
			if inter.Status != StatusOK && !strings.Contains(inter.Hint, "meshca ca intermediate --root") {
				t.Errorf("intermediate hint = %q, want how to issue a new one", inter.Hint)
			}
			root := mustCheck(t, r, CategoryExpiry, "root "+pki.ShortFingerprint(w.root.Cert))
			if root.Status != StatusOK {
				t.Errorf("root = %s, want ok (it outlives the intermediate)", root)
			}
			if r.Ready() != tc.ready || r.PastThreshold() != tc.past {
				t.Errorf("Ready() = %v, PastThreshold() = %v; want %v, %v", r.Ready(), r.PastThreshold(), tc.ready, tc.past)
			}
		})
	}
}

func TestRootExpiryHint(t *testing.T) {
	w := newWorld(t)
	r := w.run(t, Options{WarnDays: 10000, CriticalDays: 1, Now: pkitest.Now})
	root := mustCheck(t, r, CategoryExpiry, "root "+pki.ShortFingerprint(w.root.Cert))
	if root.Status != StatusWarning || !strings.Contains(root.Hint, "meshca ca root --out ./new-root") || !strings.Contains(root.Hint, "meshca rotate --root ./new-root") {
		t.Errorf("root = %s, want a warning with the rotation as fix", root)
	}
}

func TestAPIErrors(t *testing.T) {
	w := newWorld(t)
	cs := fake.NewClientset(w.objects()...)
	cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("secrets is forbidden")
	})
	r, err := Run(context.Background(), cs, Options{Now: pkitest.Now})
	if err != nil {
		t.Fatal(err)
	}
	c := mustCheck(t, r, CategoryCA, CheckCAMode)
	if c.Status != StatusError || !strings.Contains(c.Message, "read secret istio-system/cacerts: secrets is forbidden") || !strings.Contains(c.Hint, "kubectl auth can-i get secrets -n istio-system") {
		t.Errorf("CA mode = %s, want the RBAC error", c)
	}

	cs = fake.NewClientset(w.objects()...)
	cs.PrependReactor("list", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := Run(context.Background(), cs, Options{}); err == nil || !strings.Contains(err.Error(), "discover the Istio install") {
		t.Errorf("Run() error = %v, want discovery to fail", err)
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	w := newWorld(t)
	delete(w.cacerts.Data, bundle.CertChainFile)
	r := w.run(t, defaults)
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["apiVersion"] != APIVersion || doc["kind"] != Kind || doc["ready"] != false {
		t.Errorf("document header = %v %v ready=%v", doc["apiVersion"], doc["kind"], doc["ready"])
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, &back); diff != "" {
		t.Errorf("round trip mismatch (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`{"apiVersion":"v1","kind":"Pod"}`), &back); err == nil {
		t.Error("UnmarshalJSON accepted another kind")
	}
	empty, _ := json.Marshal(&Report{})
	if string(empty) != `{"apiVersion":"meshca.io/v1alpha1","kind":"Preflight","ready":true,"categories":[]}` {
		t.Errorf("empty report = %s", empty)
	}
}

func TestPrint(t *testing.T) {
	r := &Report{Categories: []Category{
		{Name: "istiod", Checks: []Check{
			{Name: "istiod found", Status: StatusOK, Message: "istio-system/istiod"},
			{Name: "flag", Status: StatusError, Message: "off", Hint: "line one\n  line two"},
		}},
		{Name: "pods", Checks: []Check{{Name: "many", Status: StatusWarning, Message: "12 pods", Details: strings.Split("a b c d e f g h i j k l", " ")}}},
	}}
	var b strings.Builder
	if err := r.Print(&b); err != nil {
		t.Fatal(err)
	}
	want := `istiod
------
✓ istiod found: istio-system/istiod
× flag: off
    fix: line one
        line two

pods
----
‼ many: 12 pods
    - a
    - b
    - c
    - d
    - e
    - f
    - g
    - h
    - i
    - j
    … and 2 more (-o json lists all)

× Not ready for a CA rotation (1 ok, 1 warning, 1 error): fix the errors above first.
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("Print() mismatch (-want +got):\n%s", diff)
	}
	if got := r.Err().Error(); !strings.Contains(got, "× flag: off (fix: line one;   line two)") {
		t.Errorf("Err() = %q", got)
	}
}

func TestParseVersion(t *testing.T) {
	tests := map[string]struct {
		v  version
		ok bool
	}{
		"1.28.1":            {version{1, 28, 1}, true},
		"1.28.1-distroless": {version{1, 28, 1}, true},
		"v1.26.0-beta.1":    {version{1, 26, 0}, true},
		"1.30":              {version{1, 30, 0}, true},
		"1.30_debug":        {version{1, 30, 0}, true},
		"latest":            {version{}, false},
		"":                  {version{}, false},
		"1":                 {version{}, false},
		"1.2.3.4":           {version{}, false},
		"1.+2.3":            {version{}, false},
		"master-abc":        {version{}, false},
	}
	for in, tc := range tests {
		v, ok := parseVersion(in)
		if v != tc.v || ok != tc.ok {
			t.Errorf("parseVersion(%q) = %v, %v; want %v, %v", in, v, ok, tc.v, tc.ok)
		}
	}
}

func TestZtunnelUpdateStrategy(t *testing.T) {
	is := func(i int32) *intstr.IntOrString { v := intstr.FromInt32(i); return &v }
	pct := func(s string) *intstr.IntOrString { v := intstr.FromString(s); return &v }
	tests := map[string]struct {
		strategy appsv1.DaemonSetUpdateStrategy
		want     Status
	}{
		"the chart's maxSurge 1, maxUnavailable 0":  {appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType, RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: is(1), MaxUnavailable: is(0)}}, StatusOK},
		"the API defaults (surge 0, unavailable 1)": {appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType}, StatusWarning},
		"surge with pods unavailable":               {appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType, RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: is(1), MaxUnavailable: pct("10%")}}, StatusWarning},
		"zero percent unavailable with surge":       {appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType, RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxSurge: pct("25%"), MaxUnavailable: pct("0%")}}, StatusOK},
		"OnDelete":                                  {appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}, StatusWarning},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			w.ztunnel.Spec.UpdateStrategy = tc.strategy
			r := w.run(t, defaults)
			c := mustCheck(t, r, CategoryZtunnel, CheckZtunnelStrategy)
			if c.Status != tc.want {
				t.Errorf("status = %s, want %s: %s", c.Status, tc.want, c)
			}
			if c.Status == StatusWarning && !strings.Contains(c.Hint, `kubectl -n istio-system patch daemonset ztunnel --type merge -p '{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}'`) {
				t.Errorf("hint is not the exact patch: %q", c.Hint)
			}
			if !r.Ready() {
				t.Error("an update strategy is a warning, never a refusal")
			}
		})
	}
}

func TestIstiodReplicasAndIntermediateLifetime(t *testing.T) {
	w := newWorld(t)
	r := w.run(t, defaults)
	rep := mustCheck(t, r, CategoryIstiod, CheckIstiodReplicas)
	if rep.Status != StatusOK || !strings.Contains(rep.Message, "2 replica(s), 2 ready") {
		t.Errorf("istiod replicas: %s", rep)
	}
	ttl := mustCheck(t, r, CategoryCA, CheckIntermediateTTL)
	if ttl.Status != StatusOK || !strings.Contains(ttl.Message, "SECRET_TTL 24h0m0s") {
		t.Errorf("intermediate vs SECRET_TTL: %s", ttl)
	}
	// SECRET_TTL longer than what is left of the intermediate.
	w = newWorld(t)
	w.ztunnel.Spec.Template.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "SECRET_TTL", Value: "1000000h"}}
	r = w.run(t, defaults)
	ttl = mustCheck(t, r, CategoryCA, CheckIntermediateTTL)
	if ttl.Status != StatusWarning || !strings.Contains(ttl.Message, "less than the workload certificate lifetime (SECRET_TTL 1000000h0m0s)") || !r.Ready() {
		t.Errorf("intermediate shorter than SECRET_TTL: %s (ready %v)", ttl, r.Ready())
	}
}
