package rotate

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/verify"
)

// fleetVerifier answers every verification with the proxies it holds,
// judged only by who signed their leaf: what refuseStranding asks.
type fleetVerifier struct{ leafSigners map[string]string }

func (f fleetVerifier) Verify(_ context.Context, exp verify.Expectation) (*verify.Report, error) {
	rep := &verify.Report{Expectation: exp}
	for name, signer := range f.leafSigners {
		r := verify.Result{Kind: mesh.KindZtunnel, Namespace: "istio-system", Name: name, Status: verify.StatusMatch}
		if signer != exp.Signer {
			r.Status = verify.StatusStale
			r.Problems = []string{"leaf signed by " + signer[:12]}
			rep.Total.Stale++
		} else {
			rep.Total.Match++
		}
		rep.Total.Total++
		rep.Proxies = append(rep.Proxies, r)
	}
	return rep, nil
}

// TestRollbackRefusesToDropARootALeafStillNeeds: with cacerts stepped back to
// the old signer and both roots, a write of the backup (old root only) is
// refused, and nothing is written, while a proxy holds a leaf of the new
// intermediate; once every leaf comes from the old signer it is allowed.
func TestRollbackRefusesToDropARootALeafStillNeeds(t *testing.T) {
	now := time.Now()
	ca := func(root *pki.CA) (*pki.CA, *bundle.Bundle) {
		inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "c", KeyType: pki.ECDSAP256, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		b, err := bundle.FromCA(root, inter)
		if err != nil {
			t.Fatal(err)
		}
		return inter, b
	}
	oldRoot, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	oldInter, backup := ca(oldRoot)
	newInter, next := ca(newRoot)
	stepBack, err := bundle.Build(bundle.PhaseTrust, backup, next, now)
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	v := fleetVerifier{leafSigners: map[string]string{"ztunnel-a": pki.Fingerprint(oldInter.Cert), "ztunnel-b": pki.Fingerprint(newInter.Cert)}}
	c := &Cluster{Name: "c", Client: cs, Namespace: "istio-system", Verifier: v}
	e := New([]*Cluster{c}, Options{})
	st := &state{c: c, s: store{client: cs, namespace: "istio-system"}, cur: stepBack}
	err = e.refuseStranding(context.Background(), st, backup)
	if err == nil || !strings.Contains(err.Error(), "ztunnel istio-system/ztunnel-b") || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("refuseStranding with a leaf of the new intermediate = %v; want a refusal naming ztunnel-b", err)
	}
	if acts := cs.Actions(); len(acts) != 0 {
		t.Errorf("a refused rollback made %d API calls: %v", len(acts), acts)
	}
	v.leafSigners["ztunnel-b"] = pki.Fingerprint(oldInter.Cert)
	if err := e.refuseStranding(context.Background(), st, backup); err != nil {
		t.Errorf("every leaf from the old signer: %v, want the write allowed", err)
	}
	// A write that drops no root (the step back itself) is never refused.
	v.leafSigners["ztunnel-b"] = pki.Fingerprint(newInter.Cert)
	st.cur = backup
	if err := e.refuseStranding(context.Background(), st, stepBack); err != nil {
		t.Errorf("a write that only adds a root was refused: %v", err)
	}
}
