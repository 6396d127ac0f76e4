package app_test

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// rbacDir is deploy/rbac of this repository.
func rbacDir(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "rbac")
}

// kubeconfigAs writes a copy of kubeconfig whose user impersonates user in
// groups: meshca then runs with exactly the permissions of those groups.
func kubeconfigAs(t *testing.T, kubeconfig, user string, groups ...string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate, ai.ImpersonateGroups = user, groups
	}
	p := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

type run struct {
	out, err string
	code     int
}

func meshca(t *testing.T, args ...string) run {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	code := app.Run(ctx, args, env)
	return run{out.String(), errOut.String(), code}
}

// TestCommandsRunWithExactlyTheirDocumentedRoles applies deploy/rbac to a
// sandbox and runs each command as a user that has only the groups its
// role binds: verify and status without any access to Secrets, check with
// the CA reader, rotate with the rotation set. A missing permission is
// reported with the verb, resource and namespace it needs.
func TestCommandsRunWithExactlyTheirDocumentedRoles(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.Healthy(sandbox.Options{Nodes: 2, Workloads: 2}))
	ctx := context.Background()
	for _, f := range []string{"readonly.yaml", "ca-reader.yaml", "rotate.yaml"} {
		if err := s.Cluster().ApplyYAML(ctx, filepath.Join(rbacDir(t), f)); err != nil {
			t.Fatalf("apply %s: %v", f, err)
		}
	}
	readonly := kubeconfigAs(t, s.Kubeconfig(), "meshca-reader", "meshca-readonly")
	caReader := kubeconfigAs(t, s.Kubeconfig(), "meshca-checker", "meshca-readonly", "meshca-ca-reader")
	rotator := kubeconfigAs(t, s.Kubeconfig(), "meshca-rotator", "meshca-readonly", "meshca-rotate")

	t.Run("verify with the read-only role and no access to Secrets", func(t *testing.T) {
		r := meshca(t, "verify", "--kubeconfig", readonly)
		if r.code != 0 || !strings.Contains(r.err, "no access to secret istio-system/cacerts: checking trust against configmap istio-system/istio-ca-root-cert") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
		}
	})
	t.Run("check without the CA reader names the permission it lacks", func(t *testing.T) {
		r := meshca(t, "check", "--kubeconfig", readonly)
		if r.code != 1 || !strings.Contains(r.out+r.err, "secrets") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
		}
	})
	t.Run("status without the CA reader works from public objects and says what it could not check", func(t *testing.T) {
		r := meshca(t, "status", "--kubeconfig", readonly)
		want := "no access to secret istio-system/cacerts: the phase is derived from configmap istio-system/istio-ca-root-cert and the rotation record; the signer was not checked"
		if r.code != 0 || !strings.Contains(r.err, want) || !strings.Contains(r.out, "phase none") || !strings.Contains(r.out, "signer         (not checked)") {
			t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 0, phase none, and %q", r.code, r.out, r.err, want)
		}
	})
	for _, cmd := range []string{"check", "status"} {
		t.Run(cmd+" with the CA reader", func(t *testing.T) {
			r := meshca(t, cmd, "--kubeconfig", caReader)
			if r.code != 0 {
				t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
			}
		})
	}
	t.Run("rotate with the rotation set", func(t *testing.T) {
		newRoot, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		rootDir := pkitest.WriteRoot(t, newRoot)
		// First as a user who may write cacerts but not update the
		// rotation record: the error must say that cacerts already changed,
		// and the same command with the full set continues from there.
		half := kubeconfigAs(t, s.Kubeconfig(), "meshca-half", "meshca-readonly", "meshca-half")
		grantAllButRecordUpdates(t, s, "meshca-half")
		r := meshca(t, "rotate", "--root", rootDir, "--yes", "--key-type", "ecdsa-p256", "--kubeconfig", half)
		want := "secret istio-system/cacerts already holds the phase trust bundle"
		if r.code == 0 || !strings.Contains(r.err, want) || !strings.Contains(r.err, "run meshca rotate again") {
			t.Fatalf("rotate without update on configmaps: exit %d\nstderr:\n%s\nwant an error saying %q", r.code, r.err, want)
		}
		if sec, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(ctx, "cacerts", metav1.GetOptions{}); err != nil || !strings.Contains(string(sec.Data["root-cert.pem"]), string(pki.EncodeCert(newRoot.Cert))) {
			t.Fatalf("the error says cacerts holds the trust bundle, but it does not (%v)", err)
		}
		r = meshca(t, "rotate", "--root", rootDir, "--yes", "--key-type", "ecdsa-p256", "--kubeconfig", rotator)
		if r.code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
		}
		sec, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(ctx, "cacerts", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(sec.Data["root-cert.pem"]); got != string(pki.EncodeCert(newRoot.Cert)) {
			t.Errorf("after the rotation cacerts root-cert.pem is not the new root only:\n%s", got)
		}
		t.Logf("rotation as meshca-rotator:\n%s", r.out)
		r = meshca(t, "backups", "list", "--kubeconfig", rotator)
		if r.code != 0 || !strings.Contains(r.out, "cacerts-backup-") || !strings.Contains(r.out, "last rotation (complete)") {
			t.Errorf("backups list as meshca-rotator: exit %d\n%s\n%s", r.code, r.out, r.err)
		}
		r = meshca(t, "verify", "--kubeconfig", readonly)
		if r.code != 0 {
			t.Errorf("verify after the rotation: exit %d\n%s\n%s", r.code, r.out, r.err)
		}
	})
}

// grantAllButRecordUpdates lets group write what a rotation writes in the
// Istio namespace, except updates of ConfigMaps (the rotation record): the
// first phase's cacerts write succeeds and the record update after it is
// forbidden.
func grantAllButRecordUpdates(t *testing.T, s *sandbox.Sandbox, group string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: sandbox.IstioNamespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "create", "update", "delete"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "create"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update", "delete"}},
		},
	}
	if _, err := s.Client().RbacV1().Roles(sandbox.IstioNamespace).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: sandbox.IstioNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: group},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: group}},
	}
	if _, err := s.Client().RbacV1().RoleBindings(sandbox.IstioNamespace).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
