package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
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
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	fleet "github.com/meshca/meshca/internal/verify"
	vt "github.com/meshca/meshca/internal/verify/verifytest"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// now is the injected clock: every duration in the output is zero.
var now = pkitest.Now

const (
	idA = "spiffe://cluster.local/ns/ambient/sa/a"
	idB = "spiffe://cluster.local/ns/ambient/sa/b"
)

// world is a cluster in phase 1 of a rotation (cacerts roots old + new,
// signer still the old intermediate) and what each proxy answers.
type world struct {
	objects []runtime.Object
	dumps   map[string][]byte
	errs    map[string]error
	// names maps generated fingerprints to stable placeholders.
	names *strings.Replacer
}

func ptr[T any](v T) *T { return &v }

func newWorld(t *testing.T, lagging bool) *world {
	t.Helper()
	// Sorted lists of fingerprints must come out in the same order on every
	// run: keep a generation whose old root sorts first.
	p := vt.NewRotation(t)
	for pki.Fingerprint(p.OldRoot.Cert) > pki.Fingerprint(p.NewRoot.Cert) {
		p = vt.NewRotation(t)
	}
	b := pkitest.Bundle(t, p.OldRoot, p.OldInt)
	b.RootCert = append(append([]byte(nil), b.RootCert...), pki.EncodeCert(p.NewRoot.Cert)...)
	rootPEM := string(b.RootCert)
	sum := sha256.Sum256(b.RootCert)

	w := &world{dumps: map[string][]byte{}, errs: map[string]error{}}
	var pairs []string
	for _, x := range []struct {
		name string
		fp   string
	}{
		{"OLDROOT", pki.Fingerprint(p.OldRoot.Cert)}, {"NEWROOT", pki.Fingerprint(p.NewRoot.Cert)},
		{"OLDINT", pki.Fingerprint(p.OldInt.Cert)}, {"NEWINT", pki.Fingerprint(p.NewInt.Cert)},
		{"ROOTPEM", hex.EncodeToString(sum[:])},
	} {
		pairs = append(pairs, x.fp, pad(x.name, 64), x.fp[:12], pad(x.name, 12))
	}
	w.names = strings.NewReplacer(pairs...)

	zt := map[string]string{mesh.LabelApp: mesh.ZtunnelApp}
	created := metav1.NewTime(now.Add(-24 * time.Hour))
	pod := func(ns, name, node string, labels map[string]string, owner string, proxy bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, CreationTimestamp: created},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main"}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning},
		}
		if proxy {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: mesh.ProxyContainer, Env: []corev1.EnvVar{{Name: mesh.EnvXDSAgent, Value: "true"}}})
		}
		if kind, name, ok := strings.Cut(owner, "/"); ok {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: ptr(true)}}
		}
		return p
	}
	cm := func(ns, data string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": data}}
	}
	w.objects = []runtime.Object{
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Labels: map[string]string{mesh.LabelApp: mesh.IstiodApp}},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: mesh.IstiodContainer, Image: "docker.io/istio/pilot:1.28.1", Env: []corev1.EnvVar{{Name: mesh.EnvMultiRoot, Value: "true"}},
			}}}}},
		},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istio"},
			Data: map[string]string{"mesh": "defaultConfig:\n  proxyMetadata:\n    PROXY_CONFIG_XDS_AGENT: \"true\"\n"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "cacerts"}, Data: b.SecretData()},
		cm("istio-system", rootPEM),
		cm("ambient", rootPEM),
		replicaSet("ambient", "waypoint-6c7f8", "waypoint"),
		replicaSet("istio-system", "istio-ingressgateway-7b9", "istio-ingressgateway"),
		replicaSet("bookinfo", "reviews-v1-5d8", "reviews-v1"),
		pod("istio-system", "ztunnel-a1", "node-1", zt, "DaemonSet/ztunnel", false),
		pod("istio-system", "ztunnel-c3", "node-3", zt, "DaemonSet/ztunnel", false),
		pod("ambient", "waypoint-6c7f8-q2x", "node-1", map[string]string{mesh.LabelManaged: mesh.ManagedWaypoint}, "ReplicaSet/waypoint-6c7f8", true),
	}
	both := vt.Certs(p.OldRoot, p.NewRoot)
	leafA, leafB := vt.Leaf(t, p.OldInt, idA), vt.Leaf(t, p.OldInt, idB)
	w.dumps["ztunnel-a1"] = vt.ZtunnelDump(
		vt.ZtunnelIdentity{Name: idA, Chain: []*x509.Certificate{leafA, p.OldInt.Cert, p.OldRoot.Cert}, Roots: both},
		vt.ZtunnelIdentity{Name: idB, Chain: []*x509.Certificate{leafB, p.OldInt.Cert, p.OldRoot.Cert}, Roots: append(both, p.NewRoot.Cert)},
	)
	w.dumps["ztunnel-c3"] = vt.ZtunnelDump()
	w.dumps["waypoint-6c7f8-q2x"] = vt.EnvoyDump([]*x509.Certificate{vt.Leaf(t, p.OldInt, "spiffe://cluster.local/ns/ambient/sa/waypoint"), p.OldInt.Cert}, both)
	if !lagging {
		return w
	}
	// The lagging part of the fleet: a ztunnel still on the old root, a
	// ztunnel that stopped refreshing (its leaf is 20h into 24h), a
	// gateway that refuses the port-forward, a pending sidecar, a
	// namespace whose ConfigMap istiod has not rewritten.
	w.objects = append(w.objects,
		pod("istio-system", "ztunnel-b2", "node-2", zt, "DaemonSet/ztunnel", false),
		pod("istio-system", "ztunnel-d4", "node-4", zt, "DaemonSet/ztunnel", false),
		pod("istio-system", "istio-ingressgateway-7b9-abc", "node-2", map[string]string{"istio": "ingressgateway"}, "ReplicaSet/istio-ingressgateway-7b9", true),
		cm("bookinfo", string(pki.EncodeCert(p.OldRoot.Cert))),
	)
	pending := pod("bookinfo", "reviews-v1-abc", "", nil, "ReplicaSet/reviews-v1-5d8", true)
	pending.Status.Phase = corev1.PodPending
	w.objects = append(w.objects, pending)
	w.dumps["ztunnel-b2"] = vt.ZtunnelDump(
		vt.ZtunnelIdentity{Name: idA, Chain: []*x509.Certificate{leafA, p.OldInt.Cert, p.OldRoot.Cert}, Roots: vt.Certs(p.OldRoot)},
		vt.ZtunnelIdentity{Name: idB, State: "Unavailable: signing gRPC error (The service is currently unavailable)"},
	)
	frozen := pkitest.Leaf(t, p.OldInt, idA, now.Add(-20*time.Hour), 24*time.Hour).Cert
	w.dumps["ztunnel-d4"] = vt.ZtunnelDump(vt.ZtunnelIdentity{Name: idA, Chain: []*x509.Certificate{frozen, p.OldInt.Cert, p.OldRoot.Cert}, Roots: both})
	w.errs["istio-ingressgateway-7b9-abc"] = &kube.Error{Namespace: "istio-system", Pod: "istio-ingressgateway-7b9-abc", Reason: kube.ReasonPortForward, Attempts: 3,
		Err: errors.New("port-forward to port 15000 refused: connection refused")}
	return w
}

func replicaSet(ns, name, deployment string) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: deployment, Controller: ptr(true)}}}}
}

// pad makes a placeholder as long as what it replaces, so tables stay
// aligned.
func pad(name string, n int) string { return name + strings.Repeat("_", n-len(name)) }

func (w *world) connect(o *options) (fleet.Source, error) {
	c := fleet.Source{
		Clientset: fake.NewClientset(w.objects...),
		Fetch: func(_ context.Context, p *mesh.Proxy) ([]byte, error) {
			if err := w.errs[p.Name]; err != nil {
				return nil, err
			}
			d, ok := w.dumps[p.Name]
			if !ok {
				return nil, fmt.Errorf("no dump for %s", p.Name)
			}
			return d, nil
		},
	}
	if ns := o.env.Kube.Namespace; ns != nil {
		c.Namespace = *ns
	}
	return c, nil
}

type result struct {
	out, err string
	code     int
}

// run executes `meshca verify ARGS` the way internal/app wires commands.
func run(t *testing.T, w *world, args ...string) result {
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
	root.AddCommand(newCmd(env, w.connect))
	root.SetArgs(append([]string{"verify"}, args...))
	err := root.ExecuteContext(context.Background())
	res := result{out: w.names.Replace(out.String()), err: w.names.Replace(errOut.String()), code: cli.Code(err)}
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

func TestVerifyGolden(t *testing.T) {
	tests := map[string]struct {
		lagging bool
		args    []string
		code    int
		stderr  string
	}{
		"converged.table": {
			stderr: "✓ read 3 proxies in 0s (parallel 32)\n",
		},
		"lagging.table": {
			lagging: true, code: cli.ExitFailure,
			stderr: "✗ read 7 proxies in 0s (parallel 32): 1 unreadable\n",
		},
		"lagging.wide": {
			lagging: true, args: []string{"-o", "wide", "--parallel", "2"}, code: cli.ExitFailure,
			stderr: "✗ read 7 proxies in 0s (parallel 2): 1 unreadable\n",
		},
		"lagging.json": {lagging: true, args: []string{"-o", "json"}, code: cli.ExitFailure},
		"lagging.yaml": {lagging: true, args: []string{"-o", "yaml", "--timeout", "5s"}, code: cli.ExitFailure},
		"converged-all.json": {
			args: []string{"-o", "json", "--all"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, tc.lagging)
			got := run(t, w, tc.args...)
			if got.code != tc.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", got.code, tc.code, got.err)
			}
			if got.err != tc.stderr {
				t.Errorf("stderr = %q, want %q", got.err, tc.stderr)
			}
			golden(t, name, got.out)
		})
	}
}

func TestVerifyFlags(t *testing.T) {
	w := newWorld(t, false)
	cacerts := w.objects[2].(*corev1.Secret)
	roots, err := pki.ParseCertificates("root-cert.pem", cacerts.Data["root-cert.pem"])
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, newRoot := pki.Fingerprint(roots[0]), pki.Fingerprint(roots[1])
	tests := map[string]struct {
		args []string
		code int
		out  []string
		err  string
	}{
		"explicit roots and no signer check the roots only": {
			args: []string{"--expect-roots", strings.ToUpper(newRoot) + "," + oldRoot},
			out:  []string{"any signer (from flags)", "OK: 2 of 3 proxies match; 1 holds nothing to verify"},
		},
		"a new root alone fails the proxies that also trust the old one": {
			args: []string{"--expect-roots", newRoot},
			code: cli.ExitFailure,
			out:  []string{"extra root OLDROOT_____", "FAIL: 2 of 3 proxies do not match (2 stale); 2 of 2 istio-ca-root-cert ConfigMaps are stale"},
		},
		"--allow-extra-roots accepts them": {
			args: []string{"--expect-roots", newRoot, "--allow-extra-roots"},
			code: cli.ExitFailure,
			out:  []string{"leafs of 2 identities chain to root OLDROOT_____, not an expected root (" + idA + ", " + idB + ")"},
		},
		"a malformed fingerprint is a usage error": {
			args: []string{"--expect-roots", "abc"},
			code: cli.ExitUsage,
			err:  `root fingerprint "abc": want the SHA-256`,
		},
		"a signer without roots is a usage error": {
			args: []string{"--expect-signer", oldRoot},
			code: cli.ExitUsage,
			err:  "--expect-signer needs --expect-roots too",
		},
		"no parallelism is a usage error": {
			args: []string{"--parallel", "0"},
			code: cli.ExitUsage,
			err:  "--parallel must be at least 1",
		},
		"an unknown output is a usage error": {
			args: []string{"-o", "csv"},
			code: cli.ExitUsage,
			err:  `unknown output format "csv"`,
		},
		"-n names the Istio namespace, and without a CA there is nothing to verify against": {
			args: []string{"-n", "mesh"},
			code: cli.ExitFailure,
			err:  "secret mesh/cacerts (nor istio-ca-secret): not found: nothing to verify against; pass --expect-roots (and --expect-signer), or -n with the Istio namespace",
		},
		"--warn-days past the intermediate's 730 days fails every proxy holding it as expiring": {
			args: []string{"--warn-days", "800"},
			code: cli.ExitFailure,
			out:  []string{"intermediate OLDINT______ expires in 730 days", "FAIL: 2 of 3 proxies do not match (2 expiring)"},
		},
		"--warn-days 0 disables the expiry warning": {
			args: []string{"--warn-days", "0"},
			out:  []string{"OK: 2 of 3 proxies match"},
		},
		"a negative --warn-days is a usage error": {
			args: []string{"--warn-days", "-1"},
			code: cli.ExitUsage,
			err:  "--warn-days must not be negative",
		},
		"-q keeps stderr quiet": {
			args: []string{"-q"},
			out:  []string{"OK: 2 of 3 proxies match"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := run(t, w, tc.args...)
			if got.code != tc.code {
				t.Errorf("exit code = %d, want %d; stderr:\n%s", got.code, tc.code, got.err)
			}
			for _, s := range tc.out {
				if !strings.Contains(got.out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, got.out)
				}
			}
			if tc.err != "" && !strings.Contains(got.err, tc.err) {
				t.Errorf("stderr lacks %q:\n%s", tc.err, got.err)
			}
			if name == "-q keeps stderr quiet" && got.err != "" {
				t.Errorf("stderr = %q, want nothing", got.err)
			}
		})
	}
}
