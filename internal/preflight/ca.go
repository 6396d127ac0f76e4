package preflight

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// Check names of CategoryCA, CategoryExpiry and CategoryRootConfigMaps (part
// of the JSON schema). Expiry checks are named "root <fp>" and
// "intermediate <fp>" with the first 12 hex digits of the certificate's
// SHA-256 fingerprint.
const (
	CheckCAMode          = "CA mode"
	CheckCACertsComplete = "cacerts complete"
	CheckCACertsValid    = "cacerts valid"
	CheckRootConfigMaps  = "istio-ca-root-cert matches the CA"
	// CheckCAInUse says which Secret istiod serves from when cacerts and
	// istio-ca-secret both exist.
	CheckCAInUse = "CA in use"
)

// Keys of the alternative cacerts layout.
const (
	tlsCertKey = "tls.crt"
	tlsKeyKey  = "tls.key"
	caCertKey  = "ca.crt"
)

// caResult is what the CA checks found.
type caResult struct {
	category Category
	// ca is nil when there is no readable CA: the expiry and ConfigMap
	// checks are then left out.
	ca *mesh.CA
	// chain is cert-chain.pem of a valid standard-layout cacerts.
	chain []*x509.Certificate
}

// readCA reads the CA Secret istiod signs with and checks it: plug-in or
// self-signed, complete, and valid as istiod validates it at load.
func readCA(ctx context.Context, cs kubernetes.Interface, namespace string, now time.Time) (*caResult, error) {
	res := &caResult{category: Category{Name: CategoryCA}}
	add := func(c Check) { res.category.Checks = append(res.category.Checks, c) }

	cacerts, err := getSecret(ctx, cs, namespace, mesh.CACertsSecret)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		add(Check{Name: CheckCAMode, Status: StatusError, Message: err.Error(),
			Hint: fmt.Sprintf("meshca needs get on secrets in namespace %s (kubectl auth can-i get secrets -n %s)", namespace, namespace)})
		return res, nil
	}
	if cacerts == nil {
		return res, selfSigned(ctx, cs, namespace, res)
	}

	src := "secret " + namespace + "/" + mesh.CACertsSecret
	add(Check{Name: CheckCAMode, Status: StatusOK, Message: "plug-in CA: " + src})
	if c, err := servingCheck(ctx, cs, namespace, cacerts); err != nil {
		return nil, err
	} else if c != nil {
		add(*c)
	}
	complete := Check{Name: CheckCACertsComplete, Status: StatusOK}
	var missing []string
	for _, f := range bundle.Files {
		if _, ok := cacerts.Data[f]; !ok {
			missing = append(missing, f)
		}
	}
	alt := cacerts.Data[tlsCertKey] != nil && cacerts.Data[caCertKey] != nil
	switch {
	case len(missing) == len(bundle.Files) && alt:
		complete.Status = StatusError
		complete.Message = fmt.Sprintf("%s uses the %s/%s/%s layout: meshca rotates the four-key layout (%s) that istiod loads from /etc/cacerts", src, tlsCertKey, tlsKeyKey, caCertKey, strings.Join(bundle.Files, ", "))
		complete.Hint = fmt.Sprintf("recreate cacerts with %s = %s, %s = %s, %s = %s followed by the chain up to the root, %s = %s",
			bundle.CACertFile, tlsCertKey, bundle.CAKeyFile, tlsKeyKey, bundle.CertChainFile, tlsCertKey, bundle.RootCertFile, caCertKey)
	case len(missing) > 0:
		complete.Status = StatusError
		complete.Message = fmt.Sprintf("%s is incomplete: missing %s; istiod 1.27+ refuses to start on a partial bundle (\"incomplete signing CA bundle detected\")", src, strings.Join(missing, ", "))
		complete.Details = missing
		complete.Hint = fmt.Sprintf("recreate cacerts with all four keys, e.g. from a bundle directory (meshca ca verify DIR checks it first):\n  kubectl -n %s create secret generic cacerts --from-file=%s --from-file=%s --from-file=%s --from-file=%s --dry-run=client -o yaml | kubectl apply -f -",
			namespace, bundle.CACertFile, bundle.CAKeyFile, bundle.CertChainFile, bundle.RootCertFile)
	default:
		complete.Message = "all four keys: " + strings.Join(bundle.Files, ", ")
	}
	add(complete)
	if complete.Status == StatusError && !alt {
		return res, nil
	}

	ca, err := mesh.ParseCA(cacerts)
	if err != nil {
		add(Check{Name: CheckCACertsValid, Status: StatusError, Message: err.Error(),
			Hint: "fix the file named above: istiod keeps its old bundle (\"Failed to update new Plug-in CA certs\") or fails to start"})
		return res, nil
	}
	res.ca = ca
	if ca.Bundle == nil {
		return res, nil
	}
	add(validity(ca.Bundle, now, res))
	return res, nil
}

// validity is bundle.Check as a preflight check. Expiry thresholds are left
// to CategoryExpiry; the two warnings that describe a normal install (the
// tools/certs layout's root in cert-chain.pem, duplicate roots in the
// middle of a rotation) are notes of an ok check.
func validity(b *bundle.Bundle, now time.Time, res *caResult) Check {
	rep := bundle.Check(b, bundle.CheckOptions{Now: now})
	if rep.Parsed != nil {
		res.chain = rep.Parsed.Chain
	}
	c := Check{Name: CheckCACertsValid, Status: StatusOK, Message: "istiod would load it: ca-cert.pem chains to root-cert.pem through cert-chain.pem, ca-key.pem matches, the signer is a CA"}
	var errs, warns, notes []string
	for _, f := range rep.Findings {
		switch {
		case f.Severity == bundle.SeverityError:
			errs = append(errs, f.String())
		case benign(f):
			notes = append(notes, f.String())
		default:
			warns = append(warns, f.String())
		}
	}
	switch {
	case len(errs) > 0:
		c.Status = StatusError
		c.Message = "istiod would refuse it: it keeps its old bundle (\"Failed to update new Plug-in CA certs\") or, at start, fails"
		c.Details = slices.Concat(errs, warns)
		c.Hint = "fix cacerts so that it loads (meshca ca verify DIR checks a bundle directory as istiod does), or restore the last good bundle"
	case len(warns) > 0:
		c.Status = StatusWarning
		c.Message = "istiod would load it, with warnings"
		c.Details = slices.Concat(warns, notes)
	default:
		c.Details = notes
	}
	return c
}

// benign tells the bundle warnings that describe a normal install.
func benign(f bundle.Finding) bool {
	return strings.Contains(f.Message, "tools/certs layout") || strings.Contains(f.Message, "duplicate root")
}

// selfSigned checks istiod's own CA, used when there is no cacerts.
func selfSigned(ctx context.Context, cs kubernetes.Interface, namespace string, res *caResult) error {
	add := func(c Check) { res.category.Checks = append(res.category.Checks, c) }
	s, err := getSecret(ctx, cs, namespace, mesh.SelfSignedSecret)
	switch {
	case err != nil && ctx.Err() != nil:
		return err
	case err != nil:
		add(Check{Name: CheckCAMode, Status: StatusError, Message: err.Error(),
			Hint: fmt.Sprintf("meshca needs get on secrets in namespace %s (kubectl auth can-i get secrets -n %s)", namespace, namespace)})
		return nil
	case s == nil:
		add(Check{Name: CheckCAMode, Status: StatusError,
			Message: fmt.Sprintf("neither secret %s/%s nor %s/%s exists: no CA to rotate", namespace, mesh.CACertsSecret, namespace, mesh.SelfSignedSecret),
			Hint:    "pass -n with the Istio namespace; istiod creates istio-ca-secret when it starts without cacerts"})
		return nil
	}
	// A migration, not a refusal: meshca rotate creates cacerts keeping
	// the self-signed CA as signer and restarts istiod once.
	c := Check{Name: CheckCAMode, Status: StatusOK,
		Message: fmt.Sprintf("self-signed CA: istiod signs with secret %s/%s and there is no %s; meshca rotate --root DIR migrates it to a plug-in CA in phases, restarting istiod once since it does not hot-reload that switch (istio#57853)",
			namespace, mesh.SelfSignedSecret, mesh.CACertsSecret),
	}
	add(c)
	ca, err := mesh.ParseCA(s)
	if err != nil {
		res.category.Checks[len(res.category.Checks)-1].Details = []string{err.Error()}
		return nil
	}
	res.ca = ca
	return nil
}

// servingCheck says, when istio-ca-secret exists next to cacerts, which of
// the two istiod serves from (nil when there is no istio-ca-secret).
func servingCheck(ctx context.Context, cs kubernetes.Interface, namespace string, cacerts *corev1.Secret) (*Check, error) {
	s, err := getSecret(ctx, cs, namespace, mesh.SelfSignedSecret)
	if err != nil || s == nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, nil
	}
	self, err := mesh.ParseCA(s)
	if err != nil {
		return &Check{Name: CheckCAInUse, Status: StatusWarning, Message: fmt.Sprintf("secret %s/%s exists next to %s but cannot be read: %v", namespace, mesh.SelfSignedSecret, mesh.CACertsSecret, err)}, nil
	}
	c := &Check{Name: CheckCAInUse}
	switch mesh.ServingCA(ctx, cs, namespace, cacerts.Data[bundle.RootCertFile], self.RootPEM) {
	case mesh.SelfSignedSecret:
		c.Status = StatusError
		c.Message = fmt.Sprintf("istiod serves from %[2]s, not %[3]s (istio-ca-root-cert carries the self-signed root): %[3]s was created without restarting istiod, which does not hot-reload that switch (istio#57853)", namespace, mesh.SelfSignedSecret, mesh.CACertsSecret)
		c.Hint = fmt.Sprintf("delete %[2]s and let meshca migrate in phases (kubectl -n %[1]s delete secret %[2]s && meshca rotate --root DIR), or restart istiod to load it (kubectl -n %[1]s rollout restart deployment/istiod)", namespace, mesh.CACertsSecret)
	case mesh.CACertsSecret:
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("istiod serves from %[2]s; %[3]s is unused, but istiod falls back to it whenever %[2]s is missing at start", namespace, mesh.CACertsSecret, mesh.SelfSignedSecret)
		c.Hint = fmt.Sprintf("unless a meshca migration left it (it keeps it as a backup), back it up and delete it: kubectl -n %[1]s get secret %[2]s -o yaml > %[2]s.yaml && kubectl -n %[1]s delete secret %[2]s", namespace, mesh.SelfSignedSecret)
	default:
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("%s and %s both exist and istio-ca-root-cert in %s matches neither: which one istiod serves from is unknown", mesh.CACertsSecret, mesh.SelfSignedSecret, namespace)
		c.Hint = "check istiod's log, restart istiod so that it loads cacerts, and remove the Secret it does not use"
	}
	return c, nil
}

// getSecret returns nil, nil when the Secret does not exist.
func getSecret(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*corev1.Secret, error) {
	s, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

// expiryChecks compares every root and intermediate of the CA with the
// thresholds.
func expiryChecks(res *caResult, opts Options) Category {
	cat := Category{Name: CategoryExpiry}
	ca := res.ca
	seen := map[string]bool{}
	add := func(role string, c *x509.Certificate) {
		fp := pki.Fingerprint(c)
		if seen[fp] {
			return
		}
		seen[fp] = true
		cat.Checks = append(cat.Checks, expiry(role, c, opts, ca))
	}
	for _, c := range ca.Roots {
		add("root", c)
	}
	add("intermediate", ca.Signer)
	for _, c := range res.chain {
		if pki.RoleOf(c) != pki.RoleRoot {
			add("intermediate", c)
		}
	}
	return cat
}

func expiry(role string, c *x509.Certificate, opts Options, ca *mesh.CA) Check {
	now := opts.Now
	if pki.RoleOf(c) == pki.RoleRoot {
		role = "root"
	}
	chk := Check{Name: role + " " + pki.ShortFingerprint(c), Status: StatusOK}
	name := fmt.Sprintf("%s %q (sha256 %s)", role, c.Subject.CommonName, pki.ShortFingerprint(c))
	days := pki.DaysLeft(c, now)
	left := c.NotAfter.Sub(now)
	date := c.NotAfter.UTC().Format(time.RFC3339)
	within := func(d int) bool { return d > 0 && left < time.Duration(d)*24*time.Hour }
	switch {
	case now.After(c.NotAfter):
		chk.Status = StatusError
		chk.Message = fmt.Sprintf("%s expired on %s", name, date)
	case now.Before(c.NotBefore):
		chk.Status = StatusError
		chk.Message = fmt.Sprintf("%s is not valid before %s", name, c.NotBefore.UTC().Format(time.RFC3339))
	case within(opts.CriticalDays):
		chk.Status = StatusError
		chk.Message = fmt.Sprintf("%s expires on %s, in %d days (critical: within %d)", name, date, days, opts.CriticalDays)
	case within(opts.WarnDays):
		chk.Status = StatusWarning
		chk.Message = fmt.Sprintf("%s expires on %s, in %d days (warning: within %d)", name, date, days, opts.WarnDays)
	default:
		chk.Message = fmt.Sprintf("%s expires on %s, in %d days", name, date, days)
		return chk
	}
	if role == "root" {
		chk.Hint = "create a new root and rotate the mesh to it:\n  meshca ca root --out ./new-root\n  meshca rotate --root ./new-root"
		if ca.SelfSigned {
			chk.Hint = "switch to a plug-in CA first (see " + CheckCAMode + "), then create a new root and rotate:\n  meshca ca root --out ./new-root\n  meshca rotate --root ./new-root"
		}
	} else {
		chk.Hint = "issue a new intermediate under the same root (meshca ca intermediate --root ROOT_DIR --cluster NAME --out DIR) and replace ca-cert.pem, ca-key.pem and cert-chain.pem in cacerts, keeping root-cert.pem byte for byte (istiod hot-reloads a new intermediate under unchanged roots); or rotate the whole CA:\n  meshca rotate --root ./new-root"
	}
	return chk
}

// rootConfigMapChecks compares every istio-ca-root-cert with root-cert.pem.
func rootConfigMapChecks(ctx context.Context, cs kubernetes.Interface, ca *mesh.CA) (Category, error) {
	cat := Category{Name: CategoryRootConfigMaps}
	c := Check{Name: CheckRootConfigMaps, Status: StatusOK}
	cms, err := mesh.ReadRootConfigMaps(ctx, cs)
	if err != nil {
		if ctx.Err() != nil {
			return cat, err
		}
		c.Status = StatusWarning
		c.Message = "not checked: " + err.Error()
		c.Hint = "meshca needs list on configmaps in all namespaces (kubectl auth can-i list configmaps -A)"
		cat.Checks = append(cat.Checks, c)
		return cat, nil
	}
	file := ca.Source() + "[" + bundle.RootCertFile + "]"
	if ca.Bundle == nil && !ca.SelfSigned {
		file = ca.Source() + "[" + caCertKey + "]"
	}
	if len(cms) == 0 {
		c.Status = StatusWarning
		c.Message = "no istio-ca-root-cert ConfigMap in any namespace: istiod writes one into every namespace when it loads its CA"
		c.Hint = fmt.Sprintf("check that istiod runs and loads its CA: kubectl -n %s logs deployment/istiod", ca.Namespace)
		cat.Checks = append(cat.Checks, c)
		return cat, nil
	}
	for i := range cms {
		if problems := ca.Consistent(&cms[i]); len(problems) > 0 {
			c.Details = append(c.Details, cms[i].Namespace+": "+strings.Join(problems, "; "))
		}
	}
	if len(c.Details) == 0 {
		c.Message = fmt.Sprintf("all %d namespaces carry the bytes of %s", len(cms), file)
	} else {
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("%d of %d namespaces do not carry the bytes of %s: istiod has not (yet) accepted the current CA there", len(c.Details), len(cms), file)
		c.Hint = fmt.Sprintf("istiod rewrites every istio-ca-root-cert when it accepts its CA: look for \"Failed to update new Plug-in CA certs\" or \"ROOT-CA not supported\" in kubectl -n %[1]s logs deployment/istiod; a restart makes it load the CA again: kubectl -n %[1]s rollout restart deployment/istiod", ca.Namespace)
	}
	cat.Checks = append(cat.Checks, c)
	return cat, nil
}
