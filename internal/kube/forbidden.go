package kube

import (
	"errors"
	"fmt"
	"regexp"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Permission is what a forbidden request needed, read from the API server's
// authorization message.
type Permission struct {
	User, Verb, Resource, Group, Namespace string
}

// forbiddenRE matches the RBAC authorizer's message: `User "u" cannot get
// resource "secrets" in API group "" in the namespace "istio-system"`.
var forbiddenRE = regexp.MustCompile(`User "([^"]*)" cannot (\S+) resource "([^"]+)"(?: in API group "([^"]*)")?(?: in the namespace "([^"]+)")?`)

// ForbiddenPermission returns the permission a forbidden error in err's
// chain lacked; ok is false when err holds no forbidden error.
func ForbiddenPermission(err error) (p Permission, ok bool) {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || !apierrors.IsForbidden(err) {
		return p, false
	}
	m := forbiddenRE.FindStringSubmatch(status.Status().Message)
	if m == nil {
		if d := status.Status().Details; d != nil {
			p.Resource, p.Group = d.Kind, d.Group
		}
		return p, true
	}
	return Permission{User: m[1], Verb: m[2], Resource: m[3], Group: m[4], Namespace: m[5]}, true
}

// Hint says how to grant p: the kubectl check and meshca's role manifests.
func (p Permission) Hint() string {
	if p.Verb == "" {
		return "the identity of your kubeconfig lacks a permission meshca needs: see deploy/rbac and README.md (Permissions)"
	}
	res := p.Resource
	if p.Group != "" {
		res += "." + p.Group
	}
	scope := "cluster-wide"
	ns := ""
	if p.Namespace != "" {
		scope, ns = "in namespace "+p.Namespace, " -n "+p.Namespace
	}
	who := "your kubeconfig's identity"
	if p.User != "" {
		who = fmt.Sprintf("user %q", p.User)
	}
	return fmt.Sprintf("%s needs %q on %s %s (check: kubectl auth can-i %s %s%s); the roles meshca needs per command are in deploy/rbac, see README.md (Permissions)",
		who, p.Verb, res, scope, p.Verb, res, ns)
}
