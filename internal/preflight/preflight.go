// Package preflight owns `meshca check`: whether an Istio install is ready
// for a zero-downtime CA rotation (istio-ca-facts.md §5, step 0), in the
// style of `linkerd check`. Run reads what internal/mesh discovers (istiod,
// the mesh config, ztunnel, the envoy proxies, the CA Secret and the
// istio-ca-root-cert ConfigMaps) and returns a Report: categories of checks,
// each ok, warning or error, with a hint that gives the exact fix (a Helm or
// IstioOperator value, a command).
//
// The rotation engine runs the same preflight before its first write and
// refuses to start when the Report is not Ready. Nothing here writes to the
// cluster.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/mesh"
)

// Default expiry thresholds of `meshca check`.
const (
	// DefaultWarnDays: a root or intermediate expiring within this many days
	// is a warning.
	DefaultWarnDays = 90
	// DefaultCriticalDays: within this many days it is an error.
	DefaultCriticalDays = 30
)

// Schema of the JSON and YAML form of a Report.
const (
	// APIVersion of the Preflight document.
	APIVersion = "meshca.io/v1alpha1"
	// Kind of the Preflight document.
	Kind = "Preflight"
)

// Category names, in report order. They are part of the JSON schema.
const (
	// CategoryIstiod: istiod found, its version, ISTIO_MULTIROOT_MESH.
	CategoryIstiod = "istiod"
	// CategoryMeshConfig: PROXY_CONFIG_XDS_AGENT in the mesh config and in
	// the envoy proxies' pods.
	CategoryMeshConfig = "mesh-config"
	// CategoryZtunnel: ztunnel found, multi-root support, root reload.
	CategoryZtunnel = "ztunnel"
	// CategoryCA: plug-in or self-signed CA; cacerts complete and valid.
	CategoryCA = "ca"
	// CategoryExpiry: expiry of every root and intermediate against the
	// thresholds.
	CategoryExpiry = "ca-expiry"
	// CategoryRootConfigMaps: istio-ca-root-cert in every namespace carries
	// root-cert.pem.
	CategoryRootConfigMaps = "root-configmaps"
	// CategoryWebhooks: webhook configurations whose caBundle trusts the
	// mesh root, and whether istiod keeps them up to date.
	CategoryWebhooks = "webhooks"
)

// Status is the outcome of a Check.
type Status string

// Check outcomes.
const (
	// StatusOK: nothing to do.
	StatusOK Status = "ok"
	// StatusWarning: a rotation can run, but something deserves attention
	// (it will cost restarts, or a certificate is close to expiry).
	StatusWarning Status = "warning"
	// StatusError: a rotation must not start until it is fixed.
	StatusError Status = "error"
)

// Mark is the symbol of s in the text report: ✓, ‼ or ×.
func (s Status) Mark() string {
	switch s {
	case StatusOK:
		return "✓"
	case StatusWarning:
		return "‼"
	default:
		return "×"
	}
}

// Check is one result.
type Check struct {
	// Name says what was checked, stable across runs of the same install
	// (expiry checks carry the certificate's short fingerprint).
	Name string `json:"name"`
	// Status is ok, warning or error.
	Status Status `json:"status"`
	// Message says what was found.
	Message string `json:"message"`
	// Hint is the fix (a Helm or IstioOperator value, a command); empty
	// when there is nothing to do. It may span several lines.
	Hint string `json:"hint,omitempty"`
	// Details lists the objects concerned (pods, namespaces, findings).
	Details []string `json:"details,omitempty"`
}

// String renders the check on one line: mark, name, message and hint.
func (c Check) String() string {
	s := c.Status.Mark() + " " + c.Name
	if c.Message != "" {
		s += ": " + c.Message
	}
	if c.Hint != "" {
		s += " (fix: " + strings.ReplaceAll(c.Hint, "\n", "; ") + ")"
	}
	return s
}

// Category is a group of checks about one part of the install.
type Category struct {
	// Name is one of the Category* constants.
	Name string `json:"name"`
	// Checks in the order they were made.
	Checks []Check `json:"checks"`
}

// Report is the outcome of Run.
type Report struct {
	// Categories in report order; a category whose checks all depend on
	// something that failed earlier (no CA to check expiry of) is left out.
	Categories []Category
}

// Ready reports whether no check is an error: a rotation may start.
func (r *Report) Ready() bool { return len(r.Errors()) == 0 }

// HasWarnings reports whether any check is a warning.
func (r *Report) HasWarnings() bool { return len(r.with(StatusWarning, "")) > 0 }

// PastThreshold reports whether a root or intermediate expires within the
// warning threshold (a warning of CategoryExpiry): `meshca check` then exits
// with cli.ExitWarning even though the mesh is ready.
func (r *Report) PastThreshold() bool { return len(r.with(StatusWarning, CategoryExpiry)) > 0 }

// Errors returns the checks that failed, in report order.
func (r *Report) Errors() []Check { return r.with(StatusError, "") }

// Warnings returns the checks that warn, in report order.
func (r *Report) Warnings() []Check { return r.with(StatusWarning, "") }

// Err is nil when the report is Ready, and otherwise an error listing every
// failed check with its fix, for callers that refuse to go on.
func (r *Report) Err() error {
	errs := r.Errors()
	if len(errs) == 0 {
		return nil
	}
	lines := make([]string, len(errs))
	for i, c := range errs {
		lines[i] = c.String()
	}
	return fmt.Errorf("%w: %d check(s) failed:\n%s", ErrNotReady, len(errs), strings.Join(lines, "\n"))
}

// ErrNotReady is wrapped by Report.Err.
var ErrNotReady = errors.New("mesh not ready for a CA rotation")

// Check returns the first check named name in category, if any.
func (r *Report) Check(category, name string) (Check, bool) {
	for _, cat := range r.Categories {
		if cat.Name != category {
			continue
		}
		for _, c := range cat.Checks {
			if c.Name == name {
				return c, true
			}
		}
	}
	return Check{}, false
}

func (r *Report) with(s Status, category string) []Check {
	var out []Check
	for _, cat := range r.Categories {
		if category != "" && cat.Name != category {
			continue
		}
		for _, c := range cat.Checks {
			if c.Status == s {
				out = append(out, c)
			}
		}
	}
	return out
}

func (r *Report) add(c Category) {
	if len(c.Checks) > 0 {
		r.Categories = append(r.Categories, c)
	}
}

// Options tunes Run.
type Options struct {
	// Namespace is the Istio namespace (istiod, cacerts). Empty: where the
	// istiod Deployment is found, istio-system preferred.
	Namespace string
	// WarnDays and CriticalDays are the expiry thresholds: a root or
	// intermediate expiring within WarnDays is a warning, within
	// CriticalDays an error. Zero disables a threshold (an expired or
	// not-yet-valid certificate is always an error): the rotation engine
	// passes zero, since a CA close to expiry is the reason to rotate, not a
	// reason to refuse. `meshca check` passes DefaultWarnDays and
	// DefaultCriticalDays unless told otherwise.
	WarnDays, CriticalDays int
	// Now is the clock; zero means time.Now().
	Now time.Time
}

// Run checks the install that cs reaches. It returns an error only when the
// install cannot be examined at all (the API server fails, the context
// ends); everything it finds is in the Report.
func Run(ctx context.Context, cs kubernetes.Interface, opts Options) (*Report, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	in, err := mesh.Discover(ctx, cs, mesh.Options{Namespace: opts.Namespace})
	if err != nil {
		return nil, fmt.Errorf("discover the Istio install: %w", err)
	}
	r := &Report{}
	istiod := istiodChecks(in)
	istiod.Checks = append(istiod.Checks, istiodReplicaCheck(in)...)
	r.add(istiod)
	r.add(meshConfigChecks(in))
	zt := ztunnelChecks(in)
	strategies, ttl, err := ztunnelStrategyChecks(ctx, cs, in)
	if err != nil {
		return nil, err
	}
	zt.Checks = append(zt.Checks, strategies...)
	r.add(zt)
	ca, err := readCA(ctx, cs, in.Namespace, opts.Now)
	if err != nil {
		return nil, err
	}
	if ca.ca != nil && ca.ca.Signer != nil && !ca.ca.SelfSigned {
		ca.category.Checks = append(ca.category.Checks, intermediateTTLCheck(ca.ca, ttl, opts.Now))
	}
	r.add(ca.category)
	if ca.ca != nil {
		r.add(expiryChecks(ca, opts))
		cms, err := rootConfigMapChecks(ctx, cs, ca.ca)
		if err != nil {
			return nil, err
		}
		r.add(cms)
		hooks, err := webhookChecks(ctx, cs, ca.ca)
		if err != nil {
			return nil, err
		}
		r.add(hooks)
	}
	return r, nil
}
