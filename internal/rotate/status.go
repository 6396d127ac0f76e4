package rotate

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// ClusterStatus is where one cluster's rotation stands.
type ClusterStatus struct {
	Context      string   `json:"context"`
	Phase        Phase    `json:"phase"`
	BackupSecret string   `json:"backupSecret,omitempty"`
	OldRoots     []string `json:"oldRoots"`
	NewRoot      string   `json:"newRoot,omitempty"`
	// CA says what istiod signs with now: "plug-in (secret cacerts)" or
	// "self-signed (secret istio-ca-secret)"; "" when not checked (Limited).
	CA string `json:"ca,omitempty"`
	// Signer is the fingerprint of the certificate cacerts signs with now
	// ("" when cacerts could not be read: see Limited).
	Signer string `json:"signer"`
	// Roots are the fingerprints in cacerts' root-cert.pem now (or in the
	// istio-ca-root-cert ConfigMap istiod publishes, see Limited).
	Roots []string `json:"roots"`
	// Limited says what could not be checked without read access to Secret
	// cacerts; empty when it was read.
	Limited string `json:"limited,omitempty"`
	// Record is the rotation record, when a rotation was started.
	Record *Record `json:"record,omitempty"`
	// Lock is the run holding the cluster's rotation lock, if any.
	Lock *LockInfo `json:"lock,omitempty"`
	// Fleet is the verification against what cacerts holds now.
	Fleet *verify.Counts `json:"fleet,omitempty"`
	// FleetByKind breaks Fleet down per kind of proxy.
	FleetByKind []verify.KindSummary `json:"fleetByKind,omitempty"`
	// Next says what `meshca rotate` would do next.
	Next string `json:"next"`
}

// Status reports each cluster's phase, fingerprints, lock holder and fleet
// convergence. Without read access to Secret cacerts (the CA private key)
// it works from public objects — the rotation record and the
// istio-ca-root-cert ConfigMap istiod publishes — and says what it could
// not check.
func (e *Engine) Status(ctx context.Context) ([]ClusterStatus, error) {
	var out []ClusterStatus
	for _, c := range e.clusters {
		cs, err := e.status(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		lock, err := ReadLock(ctx, c.Client, c.Namespace, e.opts.Now())
		if err != nil && !apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		cs.Lock = lock
		out = append(out, *cs)
	}
	return out, nil
}

func (e *Engine) status(ctx context.Context, c *Cluster) (*ClusterStatus, error) {
	st, err := e.load(ctx, c, false)
	if apierrors.IsForbidden(err) {
		return e.publicStatus(ctx, c, err)
	}
	if err != nil {
		return nil, err
	}
	p, err := st.cur.Parse()
	if err != nil {
		return nil, err
	}
	cs := &ClusterStatus{Context: c.Name, Phase: PhaseNone, Signer: pki.Fingerprint(p.Signer), Roots: uniqueFPs(p.Roots), Record: st.record}
	cs.OldRoots = cs.Roots
	cs.CA = "plug-in (secret " + CACertsSecret + ")"
	if st.selfSigned {
		cs.CA = "self-signed (secret " + mesh.SelfSignedSecret + ")"
	}
	if st.record != nil {
		cs.Phase, cs.BackupSecret, cs.OldRoots, cs.NewRoot = st.phase, st.record.BackupSecret, st.record.OldRoots, st.record.NewRoot
	}
	// The fleet against what cacerts holds now, as `meshca verify` checks it.
	ca, err := mesh.ReadCA(ctx, c.Client, c.Namespace)
	if err != nil {
		return nil, err
	}
	if rep, err := c.Verifier.Verify(ctx, verify.ExpectationFromCA(ca)); err == nil {
		cs.Fleet = &rep.Total
		cs.FleetByKind = rep.Kinds
	}
	cs.Next = nextAction(cs.Phase, st.record)
	return cs, nil
}

// publicStatus is the status without access to Secret cacerts: the roots
// istiod published (istio-ca-root-cert, the exact root-cert.pem bytes,
// facts §1) against the record. The signer is unknown, so the phase comes
// from the roots and the record's transitions, and the fleet is checked for
// trust only.
func (e *Engine) publicStatus(ctx context.Context, c *Cluster, forbidden error) (*ClusterStatus, error) {
	root, err := mesh.ReadPublicRoots(ctx, c.Client, c.Namespace)
	if err != nil {
		return nil, fmt.Errorf("%w; and %w", forbidden, err)
	}
	rec, err := ReadRecord(ctx, c.Client, c.Namespace)
	if err != nil {
		return nil, err
	}
	roots := root.Trust().Roots
	cs := &ClusterStatus{Context: c.Name, Phase: PhaseNone, Roots: roots, OldRoots: roots, Record: rec,
		Limited: fmt.Sprintf("no access to secret %s/%s: the phase is derived from configmap %s/%s and the rotation record; the signer was not checked (grant get on that secret to check it)",
			c.Namespace, CACertsSecret, c.Namespace, root.Name)}
	if rec != nil {
		cs.Phase, cs.BackupSecret, cs.OldRoots, cs.NewRoot = derivePublic(roots, rec), rec.BackupSecret, rec.OldRoots, rec.NewRoot
	}
	exp := verify.Expectation{Source: "configmap " + c.Namespace + "/" + root.Name, Roots: roots, RootCertSHA256: (&mesh.RootConfigMap{Data: root.Data}).DataSHA256()}
	if rep, err := c.Verifier.Verify(ctx, exp); err == nil {
		cs.Fleet = &rep.Total
		cs.FleetByKind = rep.Kinds
	}
	cs.Next = nextAction(cs.Phase, rec)
	return cs, nil
}

// derivePublic tells the phase from the roots istiod publishes alone. The
// signer is unknown without cacerts, so phases that differ only by signer
// (trust and issue; every phase of an intermediate-only rotation) are told
// apart by the transitions the record holds.
func derivePublic(roots []string, r *Record) Phase {
	hasNew := slices.Contains(roots, r.NewRoot)
	hasOld := false
	for _, o := range r.OldRoots {
		if o != r.NewRoot && slices.Contains(roots, o) {
			hasOld = true
		}
	}
	issued := r.written(PhaseIssue)
	switch {
	case !hasNew && r.RolledBack != nil:
		return PhaseRolledBack
	case !hasNew:
		return PhaseNone
	case r.RolledBack != nil && !r.IntermediateOnly():
		return PhaseTrust // stepping back: both roots, old signer
	case r.IntermediateOnly() && !issued:
		return PhaseTrust
	case r.IntermediateOnly() && r.proven(PhaseIssue):
		return PhaseComplete
	case r.IntermediateOnly(), hasOld && issued:
		return PhaseIssue
	case hasOld:
		return PhaseTrust
	case r.proven(PhaseRetire):
		return PhaseComplete
	}
	return PhaseRetire
}
