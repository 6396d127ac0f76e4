package mesh

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/proxy"
)

var created = metav1.NewTime(time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC))

func ptr[T any](v T) *T { return &v }

// pod builds a pod; opts adjust it.
func pod(ns, name, node string, labels map[string]string, opts ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, CreationTimestamp: created},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func withProxy(env ...corev1.EnvVar) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: ProxyContainer, Image: "docker.io/istio/proxyv2:1.28.1", Env: env})
	}
}

func ownedBy(kind, name string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, Controller: ptr(true)}}
	}
}

func phase(ph corev1.PodPhase) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Status.Phase = ph }
}

var xdsAgent = corev1.EnvVar{Name: EnvXDSAgent, Value: "true"}

func replicaSet(ns, name, deployment string) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: deployment, Controller: ptr(true)}}}}
}

// install is an ambient mesh with a bit of everything, as the Helm charts
// and istiod's controllers name things.
func install() []runtime.Object {
	istiod := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Labels: map[string]string{LabelApp: IstiodApp, "istio": "pilot"}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(2)), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: IstiodContainer, Image: "docker.io/istio/pilot:1.28.1",
			Env: []corev1.EnvVar{{Name: "PILOT_ENABLE_AMBIENT", Value: "true"}, {Name: EnvMultiRoot, Value: "true"}},
		}}}}},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 2},
	}
	meshCM := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: MeshConfigMapName},
		Data: map[string]string{MeshConfigKey: `trustDomain: example.org
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    PROXY_CONFIG_XDS_AGENT: "true"
`},
	}
	ztunnelDS := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel", Labels: map[string]string{LabelApp: ZtunnelApp}},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "istio-proxy", Image: "docker.io/istio/ztunnel:1.28.1-distroless",
		}}}}},
		Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberReady: 2},
	}
	zt := map[string]string{LabelApp: ZtunnelApp}
	return []runtime.Object{
		istiod, meshCM, ztunnelDS,
		pod("istio-system", "ztunnel-a", "node-1", zt, ownedBy("DaemonSet", "ztunnel")),
		pod("istio-system", "ztunnel-b", "node-2", zt, ownedBy("DaemonSet", "ztunnel")),
		pod("istio-system", "ztunnel-c", "", zt, ownedBy("DaemonSet", "ztunnel"), phase(corev1.PodPending)),
		pod("istio-system", "istiod-5d9-x", "node-1", map[string]string{LabelApp: IstiodApp}),
		// A waypoint deployed by istiod's mesh controller.
		replicaSet("ambient", "waypoint-6c7f8", "waypoint"),
		pod("ambient", "waypoint-6c7f8-q2x", "node-2", map[string]string{LabelManaged: ManagedWaypoint, "gateway.networking.k8s.io/gateway-name": "waypoint"},
			withProxy(xdsAgent), ownedBy("ReplicaSet", "waypoint-6c7f8")),
		// A classic ingress gateway created before the flag was set, and a
		// Gateway API gateway.
		replicaSet("istio-system", "istio-ingressgateway-7b9", "istio-ingressgateway"),
		pod("istio-system", "istio-ingressgateway-7b9-abc", "node-1", map[string]string{LabelApp: "istio-ingressgateway", LabelIstio: "ingressgateway"},
			withProxy(), ownedBy("ReplicaSet", "istio-ingressgateway-7b9")),
		pod("edge", "public-istio-5f6-xyz", "node-2", map[string]string{LabelManaged: ManagedGateway}, withProxy(xdsAgent)),
		// Sidecars: classic and native (init container), one terminating,
		// one from a finished Job, and a pod without a proxy.
		pod("bookinfo", "reviews-v1-abc", "node-1", map[string]string{LabelRevision: "default"}, withProxy(corev1.EnvVar{Name: EnvXDSAgent, Value: "1"}),
			func(p *corev1.Pod) {
				p.Annotations = map[string]string{AnnotationSidecarStatus: `{"containers":["istio-proxy"]}`}
			}),
		pod("bookinfo", "ratings-v1-def", "node-2", nil, func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: ProxyContainer, RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)}}
		}),
		pod("bookinfo", "details-v1-old", "node-2", nil, withProxy(), func(p *corev1.Pod) { p.DeletionTimestamp = &created }),
		pod("bookinfo", "migrate-xyz", "node-1", nil, withProxy(), phase(corev1.PodSucceeded)),
		pod("bookinfo", "plain", "node-1", nil),
	}
}

func TestDiscover(t *testing.T) {
	cs := fake.NewClientset(install()...)
	in, err := Discover(context.Background(), cs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantIstiods := []Istiod{{Namespace: "istio-system", Name: "istiod", Image: "docker.io/istio/pilot:1.28.1", Version: "1.28.1", MultiRoot: true, Replicas: 2, ReadyReplicas: 2}}
	if diff := cmp.Diff(wantIstiods, in.Istiods); diff != "" {
		t.Errorf("istiods mismatch (-want +got):\n%s", diff)
	}
	if in.Namespace != "istio-system" {
		t.Errorf("namespace = %q, want istio-system", in.Namespace)
	}
	if diff := cmp.Diff(&Config{Namespace: "istio-system", Name: "istio", TrustDomain: "example.org", XDSAgent: true}, in.Config); diff != "" {
		t.Errorf("mesh config mismatch (-want +got):\n%s", diff)
	}
	wantZ := []DaemonSet{{Namespace: "istio-system", Name: "ztunnel", Image: "docker.io/istio/ztunnel:1.28.1-distroless", Version: "1.28.1-distroless", Desired: 3, Updated: 3, Ready: 2}}
	if diff := cmp.Diff(wantZ, in.Ztunnels); diff != "" {
		t.Errorf("ztunnels mismatch (-want +got):\n%s", diff)
	}
	at := created.UTC()
	ds := Owner{Kind: "DaemonSet", Name: "ztunnel"}
	wantProxies := []Proxy{
		{Kind: KindZtunnel, Namespace: "istio-system", Name: "ztunnel-a", Node: "node-1", Created: at, Ready: true, Owner: ds},
		{Kind: KindZtunnel, Namespace: "istio-system", Name: "ztunnel-b", Node: "node-2", Created: at, Ready: true, Owner: ds},
		{Kind: KindZtunnel, Namespace: "istio-system", Name: "ztunnel-c", Created: at, NotReady: "Pending (not scheduled)", Owner: ds},
		{Kind: KindWaypoint, Namespace: "ambient", Name: "waypoint-6c7f8-q2x", Node: "node-2", Created: at, Ready: true, XDSAgent: true, Owner: Owner{Kind: "Deployment", Name: "waypoint"}},
		{Kind: KindGateway, Namespace: "edge", Name: "public-istio-5f6-xyz", Node: "node-2", Created: at, Ready: true, XDSAgent: true},
		{Kind: KindGateway, Namespace: "istio-system", Name: "istio-ingressgateway-7b9-abc", Node: "node-1", Created: at, Ready: true, Owner: Owner{Kind: "Deployment", Name: "istio-ingressgateway"}},
		{Kind: KindSidecar, Namespace: "bookinfo", Name: "details-v1-old", Node: "node-2", Created: at, NotReady: "terminating"},
		{Kind: KindSidecar, Namespace: "bookinfo", Name: "ratings-v1-def", Node: "node-2", Created: at, Ready: true},
		{Kind: KindSidecar, Namespace: "bookinfo", Name: "reviews-v1-abc", Node: "node-1", Created: at, Ready: true, XDSAgent: true, Injected: true, Revision: "default"},
	}
	if diff := cmp.Diff(wantProxies, in.Proxies); diff != "" {
		t.Errorf("proxies mismatch (-want +got):\n%s", diff)
	}
	wantWarnings := []string{"skipped 1 finished proxy pods (Succeeded or Failed): they hold no certificates"}
	if diff := cmp.Diff(wantWarnings, in.Warnings); diff != "" {
		t.Errorf("warnings mismatch (-want +got):\n%s", diff)
	}
}

func TestDiscoverWithoutIstio(t *testing.T) {
	cs := fake.NewClientset(pod("bookinfo", "reviews", "n", nil, withProxy()))
	in, err := Discover(context.Background(), cs, Options{Namespace: "mesh"})
	if err != nil {
		t.Fatal(err)
	}
	if in.Namespace != "mesh" || in.Config != nil || len(in.Proxies) != 1 {
		t.Errorf("install = %+v", in)
	}
	want := []string{
		"no istiod Deployment (label app=istiod) in namespace mesh: is Istio installed? (-n names the Istio namespace)",
		"mesh config configmap mesh/istio: not found",
	}
	if diff := cmp.Diff(want, in.Warnings); diff != "" {
		t.Errorf("warnings mismatch (-want +got):\n%s", diff)
	}
}

func TestFindIstiodsPrefersIstioSystem(t *testing.T) {
	dep := func(ns, name, image, rev string) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{LabelApp: IstiodApp, LabelRevision: rev, "app.kubernetes.io/version": "1.27.0"}},
			Spec:       appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: IstiodContainer, Image: image}}}}},
		}
	}
	cs := fake.NewClientset(
		dep("aaa", "istiod", "pilot:1.27.0", ""),
		dep("istio-system", "istiod-canary", "gcr.io/istio-release/pilot@sha256:abcd", "canary"),
		dep("istio-system", "istiod", "localhost:5000/istio/pilot:1.28.1", ""),
	)
	got, err := FindIstiods(context.Background(), cs, "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range got {
		names = append(names, i.Namespace+"/"+i.Name+"@"+i.Version)
	}
	want := []string{"istio-system/istiod@1.28.1", "istio-system/istiod-canary@1.27.0", "aaa/istiod@1.27.0"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("FindIstiods() mismatch (-want +got):\n%s", diff)
	}
}

func TestImageTag(t *testing.T) {
	tests := map[string]string{
		"docker.io/istio/pilot:1.28.1":                 "1.28.1",
		"localhost:5000/istio/pilot:1.28.1-distroless": "1.28.1-distroless",
		"localhost:5000/istio/pilot":                   "",
		"pilot@sha256:0123":                            "",
		"pilot:1.2@sha256:0123":                        "1.2",
		"":                                             "",
	}
	for in, want := range tests {
		if got := ImageTag(in); got != want {
			t.Errorf("ImageTag(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadConfigOfARevision(t *testing.T) {
	cm := func(name, data string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: name}, Data: map[string]string{MeshConfigKey: data}}
	}
	tests := map[string]struct {
		objects  []runtime.Object
		revision string
		want     *Config
		err      string
	}{
		"a named revision reads istio-<rev>": {
			objects:  []runtime.Object{cm("istio", "{}"), cm("istio-canary", "defaultConfig: {proxyMetadata: {PROXY_CONFIG_XDS_AGENT: \"True\"}}")},
			revision: "canary",
			want:     &Config{Namespace: "istio-system", Name: "istio-canary", TrustDomain: "cluster.local", XDSAgent: true},
		},
		"a named revision without its own ConfigMap falls back to istio": {
			objects:  []runtime.Object{cm("istio", "caCertificates: [{pem: x}, {pem: y}]")},
			revision: "canary",
			want:     &Config{Namespace: "istio-system", Name: "istio", TrustDomain: "cluster.local", CACertificates: 2},
		},
		"a flag set to false is false": {
			objects: []runtime.Object{cm("istio", "defaultConfig: {proxyMetadata: {PROXY_CONFIG_XDS_AGENT: \"false\"}}")},
			want:    &Config{Namespace: "istio-system", Name: "istio", TrustDomain: "cluster.local"},
		},
		"broken YAML names the ConfigMap": {
			objects: []runtime.Object{cm("istio", "defaultConfig: [")},
			err:     "mesh config configmap istio-system/istio: key mesh:",
		},
		"no ConfigMap is ErrNotFound": {
			err: "mesh config configmap istio-system/istio: not found",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ReadConfig(context.Background(), fake.NewClientset(tc.objects...), "istio-system", tc.revision)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ReadConfig() error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ReadConfig() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadCA(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	newRoot := pkitest.Root(t, pki.ECDSAP256)
	inter := pkitest.Intermediate(t, root, pki.ECDSAP256, "c1")
	b := pkitest.Bundle(t, root, inter)
	// Phase 1: old + new roots.
	b.RootCert = append(append([]byte(nil), b.RootCert...), pki.EncodeCert(newRoot.Cert)...)
	secret := func(name string, data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: name}, Data: data}
	}
	rootPEM := pki.EncodeCert(root.Cert)
	tests := map[string]struct {
		secret     *corev1.Secret
		source     string
		roots      []string
		signer     string
		withBundle bool
		err        string
	}{
		"cacerts gives the set of root-cert.pem and ca-cert.pem as signer": {
			secret: secret("cacerts", b.SecretData()),
			source: "secret istio-system/cacerts", roots: fps(root, newRoot), signer: pki.Fingerprint(inter.Cert), withBundle: true,
		},
		"the tls.crt/ca.crt layout is read too": {
			secret: secret("cacerts", map[string][]byte{"tls.crt": pki.EncodeCert(inter.Cert), "tls.key": []byte("k"), "ca.crt": rootPEM}),
			source: "secret istio-system/cacerts", roots: fps(root), signer: pki.Fingerprint(inter.Cert),
		},
		"istiod's self-signed CA is its own root": {
			secret: secret("istio-ca-secret", map[string][]byte{"ca-cert.pem": rootPEM, "ca-key.pem": []byte("k"), "root-cert.pem": nil}),
			source: "secret istio-system/istio-ca-secret", roots: fps(root), signer: pki.Fingerprint(root.Cert),
		},
		"a partial cacerts is refused as istiod refuses it": {
			secret: secret("cacerts", map[string][]byte{"ca-cert.pem": pki.EncodeCert(inter.Cert), "root-cert.pem": rootPEM}),
			err:    "secret istio-system/cacerts: incomplete signing CA bundle: missing ca-key.pem, cert-chain.pem",
		},
		"a malformed root-cert.pem names the key": {
			secret: secret("cacerts", map[string][]byte{"ca-cert.pem": pki.EncodeCert(inter.Cert), "ca-key.pem": b.CAKey, "cert-chain.pem": b.CertChain, "root-cert.pem": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")}),
			err:    "secret istio-system/cacerts[root-cert.pem]",
		},
		"no CA secret at all is ErrNotFound": {
			err: "secret istio-system/cacerts (nor istio-ca-secret): not found",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var objs []runtime.Object
			if tc.secret != nil {
				objs = append(objs, tc.secret)
			}
			ca, err := ReadCA(context.Background(), fake.NewClientset(objs...), "istio-system")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ReadCA() error = %v, want %q", err, tc.err)
				}
				if tc.secret == nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("ReadCA() error does not wrap ErrNotFound")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ca.Source() != tc.source || !cmp.Equal(ca.Trust().Roots, tc.roots) || ca.SignerFingerprint() != tc.signer || (ca.Bundle != nil) != tc.withBundle {
				t.Errorf("ReadCA() = %s roots %v signer %s bundle %v; want %s %v %s %v",
					ca.Source(), ca.Trust().Roots, ca.SignerFingerprint(), ca.Bundle != nil, tc.source, tc.roots, tc.signer, tc.withBundle)
			}
		})
	}
}

func TestRootConfigMaps(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	newRoot := pkitest.Root(t, pki.ECDSAP256)
	inter := pkitest.Intermediate(t, root, pki.ECDSAP256, "c1")
	b := pkitest.Bundle(t, root, inter)
	b.RootCert = append(append([]byte(nil), b.RootCert...), pki.EncodeCert(newRoot.Cert)...)
	cacerts := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "cacerts"}, Data: b.SecretData()}
	cm := func(ns, data string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": data}}
	}
	oldOnly := string(pki.EncodeCert(root.Cert))
	cs := fake.NewClientset(cacerts,
		cm("istio-system", string(b.RootCert)),
		cm("bookinfo", oldOnly),
		cm("ambient", oldOnly+string(pki.EncodeCert(newRoot.Cert))+"\n"),
		cm("broken", "nope"),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "other"}, Data: map[string]string{"root-cert.pem": "x"}},
	)
	ca, err := ReadCA(context.Background(), cs, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	cms, err := ReadRootConfigMaps(context.Background(), cs)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for i := range cms {
		got[cms[i].Namespace] = ca.Consistent(&cms[i])
	}
	want := map[string][]string{
		"istio-system": nil,
		"bookinfo":     {"missing root " + pki.Fingerprint(newRoot.Cert)[:12]},
		"ambient":      {"same roots but not the bytes of secret istio-system/cacerts[root-cert.pem]: istiod has not reloaded it yet"},
		"broken":       {"configmap broken/istio-ca-root-cert: root-cert.pem: no PEM block found (malformed, truncated or not PEM at all)"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Consistent() mismatch (-want +got):\n%s", diff)
	}
	if cms[0].Namespace != "ambient" || cms[3].Namespace != "istio-system" {
		t.Errorf("ConfigMaps not sorted by namespace: %s ... %s", cms[0].Namespace, cms[3].Namespace)
	}
	if cms[3].DataSHA256() != ca.RootPEMSHA256() {
		t.Error("DataSHA256() of an up-to-date ConfigMap differs from the CA's RootPEMSHA256()")
	}
}

func fps(cas ...*pki.CA) []string {
	out := make([]string, len(cas))
	for i, c := range cas {
		out[i] = pki.Fingerprint(c.Cert)
	}
	return proxy.NewTrust(out...).Roots
}
