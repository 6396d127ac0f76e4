package check

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/preflight"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

func ptr[T any](v T) *T { return &v }

// world is an ambient install; tests adjust it before running the command.
type world struct {
	root, inter *pki.CA
	istiod      *appsv1.Deployment
	ztunnel     *appsv1.DaemonSet
	cacerts     *corev1.Secret
	pods        []*corev1.Pod
	now         time.Time
	// names maps generated fingerprints and common names to placeholders,
	// so golden files do not change from run to run.
	names *strings.Replacer
	// namespace records -n as the command passed it on.
	namespace string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{root: pkitest.Root(t, pki.ECDSAP256), now: pkitest.Now}
	w.inter = pkitest.Intermediate(t, w.root, pki.ECDSAP256, "c1")
	var pairs []string
	for _, x := range []struct {
		name string
		c    *pki.CA
	}{{"ROOT", w.root}, {"INTER", w.inter}} {
		pairs = append(pairs, pki.Fingerprint(x.c.Cert), x.name+"-FINGERPRINT", pki.ShortFingerprint(x.c.Cert), x.name+"-FP", x.c.Cert.Subject.CommonName, x.name+"-CN")
	}
	w.names = strings.NewReplacer(pairs...)
	w.istiod = &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Labels: map[string]string{mesh.LabelApp: mesh.IstiodApp}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(1)), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: mesh.IstiodContainer, Image: "docker.io/istio/pilot:1.28.1", Env: []corev1.EnvVar{{Name: mesh.EnvMultiRoot, Value: "true"}},
		}}}}},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 1},
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
	w.cacerts = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "cacerts"}, Data: pkitest.Bundle(t, w.root, w.inter).SecretData()}
	w.pods = []*corev1.Pod{
		pod("ambient", "waypoint-6c7f8-q2x", map[string]string{mesh.LabelManaged: mesh.ManagedWaypoint}, "Deployment/waypoint", true),
		pod("bookinfo", "reviews-v1-abc", nil, "Deployment/reviews-v1", true),
	}
	return w
}

func pod(ns, name string, labels map[string]string, owner string, xdsAgent bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, CreationTimestamp: metav1.NewTime(pkitest.Now.Add(-48 * time.Hour))},
		Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: mesh.ProxyContainer}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if xdsAgent {
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: mesh.EnvXDSAgent, Value: "true"}}
	}
	if kind, oname, ok := strings.Cut(owner, "/"); ok {
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: oname, Controller: ptr(true)}}
	}
	return p
}

func (w *world) connect(o *options) (*cluster, error) {
	objs := []runtime.Object{
		w.istiod, w.ztunnel, w.cacerts,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istio"},
			Data: map[string]string{"mesh": "defaultConfig:\n  proxyMetadata:\n    PROXY_CONFIG_XDS_AGENT: \"true\"\n"}},
	}
	for _, ns := range []string{"ambient", "bookinfo", "istio-system"} {
		objs = append(objs, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert"},
			Data: map[string]string{"root-cert.pem": string(w.cacerts.Data[bundle.RootCertFile])}})
	}
	for _, p := range w.pods {
		objs = append(objs, p)
	}
	c := &cluster{clientset: fake.NewClientset(objs...)}
	if ns := o.env.Kube.Namespace; ns != nil {
		c.namespace = *ns
	}
	w.namespace = c.namespace
	return c, nil
}

type result struct {
	out, err string
	code     int
}

// run executes `meshca check ARGS` the way internal/app wires commands.
func run(t *testing.T, w *world, args ...string) result {
	t.Helper()
	return runWith(t, w.connect, w.now, w.names, args...)
}

// runWith runs the command with a given way to reach the cluster, clock and
// placeholders.
func runWith(t *testing.T, connect func(*options) (*cluster, error), now time.Time, names *strings.Replacer, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		Kube:    genericclioptions.NewConfigFlags(true),
		Now:     func() time.Time { return now },
	}
	root := &cobra.Command{Use: "meshca", SilenceUsage: true, SilenceErrors: true}
	env.Kube.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Exit(cli.ExitUsage, err) })
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.AddCommand(newCmd(env, connect))
	root.SetArgs(append([]string{"check"}, args...))
	err := root.ExecuteContext(context.Background())
	res := result{out: names.Replace(out.String()), err: names.Replace(errOut.String()), code: cli.Code(err)}
	var exit *cli.ExitError
	if err != nil && (!errors.As(err, &exit) || exit.Err != nil) {
		res.err += "Error: " + err.Error() + "\n"
	}
	return res
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got), run go test -update if intended:\n%s", path, diff)
	}
}

// notReady breaks the three things the rotation engine refuses on.
func notReady(w *world) {
	w.istiod.Spec.Template.Spec.Containers[0].Env = nil
	w.ztunnel.Spec.Template.Spec.Containers[0].Image = "docker.io/istio/ztunnel:1.25.1"
	delete(w.cacerts.Data, bundle.CAKeyFile)
}

// expiring moves the clock to 60 days before the intermediate expires and
// adds a sidecar created before PROXY_CONFIG_XDS_AGENT was set.
func expiring(w *world) {
	w.now = w.inter.Cert.NotAfter.Add(-60 * 24 * time.Hour)
	w.pods = append(w.pods, pod("bookinfo", "ratings-v1-old", nil, "Deployment/ratings-v1", false))
}

func TestCheckGolden(t *testing.T) {
	tests := map[string]struct {
		change func(*world)
		args   []string
		code   int
	}{
		"ready.table":     {code: cli.ExitOK},
		"ready.json":      {args: []string{"-o", "json"}, code: cli.ExitOK},
		"expiring.table":  {change: expiring, code: cli.ExitWarning},
		"expiring.json":   {change: expiring, args: []string{"-o", "json"}, code: cli.ExitWarning},
		"not-ready.table": {change: notReady, code: cli.ExitFailure},
		"not-ready.json":  {change: notReady, args: []string{"-o", "json"}, code: cli.ExitFailure},
		"not-ready.yaml":  {change: notReady, args: []string{"-o", "yaml"}, code: cli.ExitFailure},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			if tc.change != nil {
				tc.change(w)
			}
			got := run(t, w, tc.args...)
			if got.code != tc.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", got.code, tc.code, got.err)
			}
			if got.err != "" {
				t.Errorf("stderr = %q, want nothing", got.err)
			}
			golden(t, name, got.out)
		})
	}
}

func TestCheckExitCodes(t *testing.T) {
	tests := map[string]struct {
		change func(*world)
		args   []string
		code   int
		err    string
	}{
		"a healthy mesh is ready": {code: cli.ExitOK},
		"warnings below a threshold keep exit 0": {
			change: func(w *world) {
				w.pods = append(w.pods, pod("bookinfo", "ratings-v1-old", nil, "Deployment/ratings-v1", false))
			},
			code: cli.ExitOK,
		},
		"expiry within --warn-days exits 3":  {change: expiring, code: cli.ExitWarning},
		"a lower --warn-days clears it":      {change: expiring, args: []string{"--warn-days", "50", "--critical-days", "20"}, code: cli.ExitOK},
		"--warn-days 0 disables the warning": {change: expiring, args: []string{"--warn-days", "0"}, code: cli.ExitOK},
		"expiry within --critical-days exits 1": {
			change: expiring, args: []string{"--critical-days", "61", "--warn-days", "120"}, code: cli.ExitFailure,
		},
		"any error exits 1":              {change: notReady, code: cli.ExitFailure},
		"MULTIROOT off alone exits 1":    {change: func(w *world) { w.istiod.Spec.Template.Spec.Containers[0].Env = nil }, code: cli.ExitFailure},
		"-n reaches the Istio namespace": {args: []string{"-n", "mesh"}, code: cli.ExitFailure},
		"an unknown format is a usage error": {
			args: []string{"-o", "wide"}, code: cli.ExitUsage, err: `unknown output format "wide": use one of table|json|yaml`,
		},
		"negative days are a usage error": {
			args: []string{"--warn-days", "-1"}, code: cli.ExitUsage, err: "must not be negative",
		},
		"critical above warn is a usage error": {
			args: []string{"--warn-days", "10", "--critical-days", "20"}, code: cli.ExitUsage, err: "--critical-days 20 is more than --warn-days 10",
		},
		"arguments are refused (internal/app turns this into exit 2)": {args: []string{"extra"}, code: cli.ExitFailure, err: `unknown command "extra"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			if tc.change != nil {
				tc.change(w)
			}
			got := run(t, w, tc.args...)
			if got.code != tc.code {
				t.Errorf("exit code = %d, want %d; stdout:\n%s\nstderr:\n%s", got.code, tc.code, got.out, got.err)
			}
			if !strings.Contains(got.err, tc.err) {
				t.Errorf("stderr = %q, want it to contain %q", got.err, tc.err)
			}
		})
	}
}

func TestCheckNamespaceFlag(t *testing.T) {
	w := newWorld(t)
	got := run(t, w, "-n", "mesh", "-o", "json")
	if w.namespace != "mesh" {
		t.Errorf("namespace = %q, want mesh", w.namespace)
	}
	if !strings.Contains(got.out, "no istiod Deployment (label app=istiod) in namespace mesh") {
		t.Errorf("output does not name namespace mesh:\n%s", got.out)
	}
}

// TestCheckJSONSchema pins the documented schema: the field names and types
// of every level, so that a change shows up here and not in a user's script.
func TestCheckJSONSchema(t *testing.T) {
	w := newWorld(t)
	notReady(w)
	got := run(t, w, "-o", "json")
	var doc map[string]any
	if err := json.Unmarshal([]byte(got.out), &doc); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]any) []string {
		var out []string
		for _, k := range []string{"apiVersion", "kind", "ready", "categories", "name", "checks", "status", "message", "hint", "details"} {
			if _, ok := m[k]; ok {
				out = append(out, k)
			}
		}
		if len(out) != len(m) {
			t.Errorf("undocumented fields in %v", m)
		}
		return out
	}
	if diff := cmp.Diff([]string{"apiVersion", "kind", "ready", "categories"}, keys(doc)); diff != "" {
		t.Errorf("top-level fields (-want +got):\n%s", diff)
	}
	if doc["apiVersion"] != preflight.APIVersion || doc["kind"] != preflight.Kind || doc["ready"] != false {
		t.Errorf("header = %v %v %v", doc["apiVersion"], doc["kind"], doc["ready"])
	}
	statuses := map[string]bool{}
	for _, c := range doc["categories"].([]any) {
		cat := c.(map[string]any)
		if diff := cmp.Diff([]string{"name", "checks"}, keys(cat)); diff != "" {
			t.Errorf("category fields (-want +got):\n%s", diff)
		}
		for _, ch := range cat["checks"].([]any) {
			check := ch.(map[string]any)
			k := keys(check)
			if len(k) < 3 || k[0] != "name" || k[1] != "status" || k[2] != "message" {
				t.Errorf("check fields = %v, want name, status, message[, hint][, details]", k)
			}
			statuses[check["status"].(string)] = true
			if d, ok := check["details"]; ok {
				if _, isList := d.([]any); !isList {
					t.Errorf("details = %T, want a list", d)
				}
			}
		}
	}
	if diff := cmp.Diff(map[string]bool{"ok": true, "warning": false, "error": true}, map[string]bool{"ok": statuses["ok"], "warning": statuses["warning"], "error": statuses["error"]}); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
}
