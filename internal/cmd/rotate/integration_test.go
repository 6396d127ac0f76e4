package rotate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// TestEveryContextRunsAsTheImpersonatedUser: with two contexts, `--as`
// applies to both. Context east authenticates as the sandbox's admin;
// context west as a ServiceAccount that may do nothing but impersonate
// alice. Before alice has rights, status is refused naming alice; after, it
// succeeds on both contexts — west only can, through alice — and without
// --as, west is refused as the ServiceAccount.
func TestEveryContextRunsAsTheImpersonatedUser(t *testing.T) {
	s := sandboxtest.Start(t, sandboxtest.Healthy(sandbox.Options{Nodes: 1, Workloads: 1, Logf: func(string, ...any) {}}))
	ctx := context.Background()
	c := s.Client()
	if _, err := c.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "impersonator"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "impersonate-alice"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"users"}, Verbs: []string{"impersonate"}, ResourceNames: []string{"alice"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "impersonator-impersonates-alice"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "impersonate-alice"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "default", Name: "impersonator"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server's authorizer learns of a binding through its
	// informers, a moment after the create: wait until it is in force.
	waitAllowed(t, c, "system:serviceaccount:default:impersonator", authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users", Name: "alice"})
	tok, err := c.CoreV1().ServiceAccounts("default").CreateToken(ctx, "impersonator", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A kubeconfig with two contexts on the sandbox: east as admin, west as
	// the ServiceAccount.
	cfg, err := clientcmd.LoadFromFile(s.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cur := cfg.Contexts[cfg.CurrentContext]
	cfg.AuthInfos["impersonator"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["east"] = &clientcmdapi.Context{Cluster: cur.Cluster, AuthInfo: cur.AuthInfo}
	cfg.Contexts["west"] = &clientcmdapi.Context{Cluster: cur.Cluster, AuthInfo: "impersonator"}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
		code := app.Run(ctx, append([]string{"status", "--kubeconfig", kubeconfig, "-o", "json"}, args...), env)
		return code, out.String(), errOut.String()
	}

	code, _, stderr := run("--context", "east", "--context", "west", "--as", "alice")
	if code != cli.ExitFailure || !strings.Contains(stderr, `"alice"`) {
		t.Fatalf("before alice has rights: exit %d, stderr %q; want a refusal naming alice", code, stderr)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-admin"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "alice"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAllowed(t, c, "alice", authorizationv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "istio-system", Name: "cacerts"})
	code, stdout, stderr := run("--context", "east", "--context", "west", "--as", "alice")
	if code != cli.ExitOK {
		t.Fatalf("as alice with rights: exit %d\n%s", code, stderr)
	}
	var doc struct {
		Clusters []struct {
			Context string `json:"context"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil || len(doc.Clusters) != 2 || doc.Clusters[0].Context != "east" || doc.Clusters[1].Context != "west" {
		t.Errorf("status of both contexts = %+v (%v)\n%s", doc, err, stdout)
	}
	code, _, stderr = run("--context", "west")
	if code != cli.ExitFailure || !strings.Contains(stderr, "system:serviceaccount:default:impersonator") {
		t.Errorf("west without --as: exit %d, stderr %q; want a refusal naming the ServiceAccount", code, stderr)
	}
	// A one-cluster command takes --context once.
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	if code := app.Run(ctx, []string{"check", "--kubeconfig", kubeconfig, "--context", "east", "--context", "west"}, env); code != cli.ExitUsage {
		t.Errorf("check with two contexts: exit %d, want %d (%s)", code, cli.ExitUsage, errOut.String())
	}
}

// waitAllowed waits until the API server's authorizer allows user attrs,
// as a SubjectAccessReview answers.
func waitAllowed(t *testing.T, c kubernetes.Interface, user string, attrs authorizationv1.ResourceAttributes) {
	t.Helper()
	var last *authorizationv1.SubjectAccessReview
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		r, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: &attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		last = r
		return r.Status.Allowed, nil
	})
	if err != nil {
		t.Fatalf("%s is not allowed to %s %s %s/%s: %v (last review: %+v)", user, attrs.Verb, attrs.Resource, attrs.Namespace, attrs.Name, err, last)
	}
}
