package app_test

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

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
// role binds: verify without any access to Secrets, check and status with
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
	t.Run("status without the CA reader names the permission it lacks", func(t *testing.T) {
		r := meshca(t, "status", "--kubeconfig", readonly)
		want := `Permission: user "meshca-reader" needs "get" on secrets in namespace istio-system (check: kubectl auth can-i get secrets -n istio-system)`
		if r.code != 1 || !strings.Contains(r.err, want) {
			t.Errorf("exit %d, stderr:\n%s\nwant %q", r.code, r.err, want)
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
		r := meshca(t, "rotate", "--root", pkitest.WriteRoot(t, newRoot), "--yes", "--key-type", "ecdsa-p256", "--kubeconfig", rotator)
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
		r = meshca(t, "verify", "--kubeconfig", readonly)
		if r.code != 0 {
			t.Errorf("verify after the rotation: exit %d\n%s\n%s", r.code, r.out, r.err)
		}
	})
}
