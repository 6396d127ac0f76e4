package rotate_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// objects lists the Secrets and ConfigMaps of the Istio namespace with their
// resourceVersions: any create, update or delete changes it.
func objects(t *testing.T, cs kubernetes.Interface) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	secrets, err := cs.CoreV1().Secrets(sandbox.IstioNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets.Items {
		out["secret/"+s.Name] = s.ResourceVersion
	}
	cms, err := cs.CoreV1().ConfigMaps(sandbox.IstioNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cms.Items {
		out["configmap/"+c.Name] = c.ResourceVersion
	}
	return out
}

// TestPathlenZeroRootIsRefusedByRotateBeforeAnyWrite: `meshca rotate` with
// a root of pathlen 0 (--root) or a bundle under one (--ca-dir) exits 1
// naming the constraint and its fix, and leaves the Istio namespace as it
// was: cacerts untouched, no backup, no pending bundle, no record.
func TestPathlenZeroRootIsRefusedByRotateBeforeAnyWrite(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.Healthy(sandbox.Options{Nodes: 1, Workloads: 1}))
	root := pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
		c.MaxPathLen, c.MaxPathLenZero = 0, true
		c.NotBefore = time.Now().Add(-time.Hour)
		c.NotAfter = time.Now().AddDate(5, 0, 0)
	})
	inter := pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
		c.MaxPathLen, c.MaxPathLenZero = 0, true
		c.NotBefore = time.Now().Add(-time.Hour)
		c.NotAfter = time.Now().AddDate(1, 0, 0)
	})
	before := objects(t, s.Client())
	for name, args := range map[string][]string{
		"--root":   {"--root", pkitest.WriteRoot(t, root)},
		"--ca-dir": {"--ca-dir", pkitest.WriteBundle(t, pkitest.Bundle(t, root, inter))},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
			code := app.Run(context.Background(), append([]string{"rotate", "--yes", "--kubeconfig", s.Kubeconfig()}, args...), env)
			if code != cli.ExitFailure || !strings.Contains(errOut.String(), "pathlen:0") || !strings.Contains(errOut.String(), "fix: ") {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 naming pathlen:0 and the fix", code, errOut.String())
			}
			if d := cmp.Diff(before, objects(t, s.Client())); d != "" {
				t.Errorf("secrets and configmaps of %s changed (-before +after):\n%s", sandbox.IstioNamespace, d)
			}
		})
	}
}

// TestASecondRotationSeesTheLockBeforeWriting: while another run holds the
// rotation Lease, `meshca rotate` exits 1 naming the holder and its root,
// and changes nothing in the Istio namespace.
func TestASecondRotationSeesTheLockBeforeWriting(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.Healthy(sandbox.Options{Nodes: 1, Workloads: 1}))
	ctx := context.Background()
	now := metav1.NewMicroTime(time.Now())
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: rotate.LockName, Namespace: sandbox.IstioNamespace, Annotations: map[string]string{"meshca.io/new-root": "0123456789abcdef"}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To("operator-a/4242/xyz"), LeaseDurationSeconds: ptr.To(int32(3600)),
			AcquireTime: &now, RenewTime: &now,
		},
	}
	if _, err := s.Client().CoordinationV1().Leases(sandbox.IstioNamespace).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	before := objects(t, s.Client())
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	code := app.Run(ctx, []string{"rotate", "--yes", "--kubeconfig", s.Kubeconfig(), "--root", pkitest.WriteRoot(t, root)}, env)
	if code != cli.ExitFailure || !strings.Contains(errOut.String(), "held by operator-a/4242/xyz (rotating to root 0123456789ab") {
		t.Errorf("exit %d, stderr:\n%s\nwant exit 1 naming the holder and its root", code, errOut.String())
	}
	if d := cmp.Diff(before, objects(t, s.Client())); d != "" {
		t.Errorf("secrets and configmaps of %s changed (-before +after):\n%s", sandbox.IstioNamespace, d)
	}
}
