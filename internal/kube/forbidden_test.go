package kube

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// forbidden is the error client-go returns for an RBAC denial, with the API
// server's message.
func forbidden(msg string) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: 403, Reason: metav1.StatusReasonForbidden, Message: msg,
		Details: &metav1.StatusDetails{Kind: "secrets", Name: "cacerts"},
	}}
}

func TestForbiddenPermissionNamesVerbResourceAndNamespace(t *testing.T) {
	tests := map[string]struct {
		err  error
		want Permission
		hint string
	}{
		"a namespaced secret": {
			fmt.Errorf("read secret istio-system/cacerts: %w", forbidden(`secrets "cacerts" is forbidden: User "meshca-reader" cannot get resource "secrets" in API group "" in the namespace "istio-system"`)),
			Permission{User: "meshca-reader", Verb: "get", Resource: "secrets", Namespace: "istio-system"},
			`user "meshca-reader" needs "get" on secrets in namespace istio-system (check: kubectl auth can-i get secrets -n istio-system)`,
		},
		"a cluster-wide list in a group": {
			forbidden(`daemonsets.apps is forbidden: User "u" cannot list resource "daemonsets" in API group "apps" at the cluster scope`),
			Permission{User: "u", Verb: "list", Resource: "daemonsets", Group: "apps"},
			`needs "list" on daemonsets.apps cluster-wide (check: kubectl auth can-i list daemonsets.apps)`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := ForbiddenPermission(tc.err)
			if !ok {
				t.Fatal("not recognised as forbidden")
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("permission (-want +got):\n%s", d)
			}
			if h := got.Hint(); !strings.Contains(h, tc.hint) || !strings.Contains(h, "deploy/rbac") {
				t.Errorf("hint %q, want %q and deploy/rbac", h, tc.hint)
			}
		})
	}
	if _, ok := ForbiddenPermission(apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, "x")); ok {
		t.Error("a NotFound error taken for forbidden")
	}
}
