package htmlreport

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/verify"
)

// Collect reads what a cluster holds about its rotation: the rotation
// record (strategy, fingerprints, the time of each phase), the CA
// certificates of cacerts, of the pending bundle and of the backup (never a
// key: only the certificate files of those Secrets are parsed), and the
// fleet verified against the CA cacerts holds now. What cannot be read
// becomes a finding rather than an error, so that a report is written even
// of a broken cluster; only a record that cannot be read fails.
func Collect(ctx context.Context, c *rotate.Cluster) (Cluster, error) {
	out := Cluster{Name: c.Name, Namespace: c.Namespace}
	rec, err := rotate.ReadRecord(ctx, c.Client, c.Namespace)
	if err != nil {
		return out, err
	}
	certs := map[string]*x509.Certificate{}
	add := func(list ...*x509.Certificate) {
		for _, x := range list {
			certs[pki.Fingerprint(x)] = x
		}
	}
	cur, curErr := mesh.ReadCA(ctx, c.Client, c.Namespace)
	if curErr == nil {
		add(cur.Roots...)
		add(cur.Signer)
	} else {
		out.Findings = append(out.Findings, Finding{Subject: "secret " + c.Namespace + "/" + rotate.CACertsSecret, Problem: curErr.Error(),
			Fix: "create cacerts from your CA bundle (meshca ca intermediate, then kubectl create secret generic cacerts -n " + c.Namespace + " --from-file=DIR), or restore its backup with meshca rollback"})
	}
	if next, err := readCASecret(ctx, c.Client, c.Namespace, rotate.NextSecret); err == nil && next != nil {
		add(next.Roots...)
		add(next.Signer)
	}
	if rec == nil {
		out.Findings = append(out.Findings, Finding{Subject: "configmap " + c.Namespace + "/" + rotate.RecordName,
			Problem: "no rotation record: this cluster has not been rotated by meshca",
			Fix:     "run meshca rotate --plan to see what a rotation would do"})
	} else {
		out.Strategy = rec.Strategy
		started := rec.Started.UTC()
		out.Started = &started
		out.BackupSecret = c.Namespace + "/" + rec.BackupSecret
		out.RolledBack = rec.RolledBack
		backup, err := readCASecret(ctx, c.Client, c.Namespace, rec.BackupSecret)
		switch {
		case err != nil:
			out.Findings = append(out.Findings, Finding{Subject: "secret " + out.BackupSecret, Problem: err.Error(),
				Fix: "the backup is what meshca rollback restores: check who deleted or changed it, and keep an offline copy of your CA bundle"})
		case backup == nil:
			out.Findings = append(out.Findings, Finding{Subject: "secret " + out.BackupSecret, Problem: "the backup of the original cacerts is gone",
				Fix: "meshca rollback can no longer restore the original CA; keep an offline copy of it if you may need it"})
		default:
			add(backup.Roots...)
			add(backup.Signer)
		}
		for _, fp := range rec.OldRoots {
			out.OldRoots = append(out.OldRoots, describe(fp, certs))
		}
		out.OldSigner = ptr.To(describe(rec.OldSigner, certs))
		out.NewRoot = ptr.To(describe(rec.NewRoot, certs))
		out.NewSigner = ptr.To(describe(rec.NewSigner, certs))
		for _, t := range rec.Transitions {
			out.Bands = append(out.Bands, Band{Phase: string(t.Phase), Written: utc(t.Written), Reloaded: utc(t.Reloaded), Proven: utc(t.Proven)})
		}
		out.State = state(rec)
	}
	if curErr == nil && c.Verifier != nil {
		collectFleet(ctx, c, cur, &out)
	}
	return out, nil
}

// collectFleet verifies the fleet against the CA cacerts holds and lists
// every proxy and every problem found.
func collectFleet(ctx context.Context, c *rotate.Cluster, cur *mesh.CA, out *Cluster) {
	rep, err := c.Verifier.Verify(ctx, verify.ExpectationFromCA(cur))
	if rep == nil {
		out.Findings = append(out.Findings, Finding{Subject: "fleet", Problem: fmt.Sprintf("the fleet could not be verified: %v", err),
			Fix: "run meshca verify for the detail; the report lacks the final fleet"})
		return
	}
	t := rep.Time.UTC()
	out.FleetTime = &t
	proxies := slices.Clone(rep.Proxies)
	slices.SortFunc(proxies, func(a, b verify.Result) int {
		return cmp.Or(cmp.Compare(a.Kind.Order(), b.Kind.Order()), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, r := range proxies {
		out.Fleet = append(out.Fleet, FleetRow{Kind: string(r.Kind), Namespace: r.Namespace, Name: r.Name, Status: string(r.Status),
			Roots: shorts(r.Roots), Signers: shorts(r.Signers)})
		if r.Status == verify.StatusMatch {
			continue
		}
		problems := r.Problems
		if len(problems) == 0 {
			p := string(r.Status)
			if r.Reason != "" {
				p += ": " + r.Reason
			}
			problems = []string{p}
		}
		for _, p := range problems {
			out.Findings = append(out.Findings, Finding{Subject: string(r.Kind) + " " + r.Namespace + "/" + r.Name, Problem: p, Fix: fixFor(r)})
		}
	}
	if rep.RootConfigMaps != nil {
		for _, cm := range rep.RootConfigMaps.Stale {
			out.Findings = append(out.Findings, Finding{Subject: "configmap " + cm.Namespace + "/istio-ca-root-cert",
				Problem: "does not carry the roots of cacerts",
				Fix:     "istiod has not taken the current cacerts: check its logs; meshca rotate restarts it when it does not hot-reload"})
		}
	}
	for _, w := range rep.Warnings {
		out.Findings = append(out.Findings, Finding{Subject: "discovery", Problem: w, Fix: "see meshca check"})
	}
}

// fixFor says what to do about a proxy that does not match.
func fixFor(r verify.Result) string {
	owner := "its workload"
	if r.Owner != nil && r.Owner.Name != "" {
		owner = strings.ToLower(r.Owner.Kind) + "/" + r.Owner.Name
	}
	switch r.Status {
	case verify.StatusStale:
		return fmt.Sprintf("it still holds the previous CA: wait for its refresh (half the certificate lifetime) or restart it: kubectl rollout restart -n %s %s", r.Namespace, owner)
	case verify.StatusNotRefreshing, verify.StatusExpiring:
		return fmt.Sprintf("its certificate is not being renewed: check that istiod signs its CSRs (istiod logs), then restart it: kubectl rollout restart -n %s %s", r.Namespace, owner)
	case verify.StatusUnreadable, verify.StatusNotReady:
		return fmt.Sprintf("meshca could not read it: check the pod (kubectl describe pod -n %s %s) and run meshca verify again", r.Namespace, r.Name)
	case verify.StatusNothingToVerify:
		return "nothing to do: it holds no workload certificate (no workload scheduled on it)"
	}
	return "run meshca verify for the detail"
}

// readCASecret parses the certificate files of a Secret in the cacerts
// layout; nil when it does not exist.
func readCASecret(ctx context.Context, cs kubernetes.Interface, namespace, name string) (*mesh.CA, error) {
	if name == "" {
		return nil, nil
	}
	s, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", namespace, name, err)
	}
	return mesh.ParseCA(s)
}

// describe is the Cert of fingerprint fp, with its subject and validity
// when the certificate was found.
func describe(fp string, certs map[string]*x509.Certificate) Cert {
	c := Cert{Fingerprint: fp}
	if x := certs[fp]; x != nil {
		c.Subject = pki.SubjectString(x)
		c.NotBefore, c.NotAfter = utc(&x.NotBefore), utc(&x.NotAfter)
	}
	return c
}

// state says where a recorded rotation stands.
func state(rec *rotate.Record) string {
	if rec.RolledBack != nil {
		return "rolled back to the backup"
	}
	if len(rec.Transitions) == 0 {
		return "recorded, nothing written yet"
	}
	last := rec.Transitions[len(rec.Transitions)-1]
	if last.Proven != nil {
		return "phase " + string(last.Phase) + " proven"
	}
	return "phase " + string(last.Phase) + " written, not proven yet"
}

// WhoAmI asks the API server who the client authenticates as
// (SelfSubjectReview); "" when it cannot tell.
func WhoAmI(ctx context.Context, cs kubernetes.Interface) string {
	r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil || r == nil {
		return ""
	}
	return r.Status.UserInfo.Username
}

// Axis sets m's time axis from what it holds: record times, events, fleet
// and probe samples.
func Axis(m *Model) {
	for _, c := range m.Clusters {
		if c.Started != nil {
			widen(m, *c.Started, *c.Started)
		}
		for _, b := range c.Bands {
			for _, t := range []*time.Time{b.Written, b.Reloaded, b.Proven} {
				if t != nil {
					widen(m, *t, *t)
				}
			}
		}
		if c.RolledBack != nil {
			widen(m, *c.RolledBack, *c.RolledBack)
		}
	}
	for _, s := range m.Probe {
		widen(m, s.Time, s.Time)
	}
}

func shorts(fps []string) []string {
	out := make([]string, len(fps))
	for i, fp := range fps {
		out[i] = short(fp)
	}
	return out
}

// short is the 12-digit form of a fingerprint meshca prints everywhere.
func short(fp string) string {
	if len(fp) > 12 {
		return fp[:12]
	}
	return fp
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
