package rotate

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

// These unit tests need no sandbox and no binaries:
// go test ./internal/rotate/ -run Unit

func rec(old []string, oldSigner, newRoot, newSigner string, proven ...Phase) *Record {
	r := &Record{OldRoots: old, OldSigner: oldSigner, NewRoot: newRoot, NewSigner: newSigner}
	t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, p := range proven {
		r.mark(p, false, t)
		r.mark(p, true, t)
	}
	return r
}

func TestUnitDerive(t *testing.T) {
	full := rec([]string{"A"}, "sA", "B", "sB")
	inter := rec([]string{"A"}, "sA", "A", "sA2")
	tests := map[string]struct {
		h    holding
		r    *Record
		want Phase
		err  string
	}{
		"old signer, old root only is none":             {holding{Signer: "sA", Roots: []string{"A"}}, full, PhaseNone, ""},
		"old signer with both roots is trust":           {holding{Signer: "sA", Roots: []string{"A", "B"}}, full, PhaseTrust, ""},
		"new signer with both roots is issue":           {holding{Signer: "sB", Roots: []string{"A", "B"}}, full, PhaseIssue, ""},
		"new signer, new root only is retire":           {holding{Signer: "sB", Roots: []string{"B"}}, full, PhaseRetire, ""},
		"retire proven is complete":                     {holding{Signer: "sB", Roots: []string{"B"}}, rec([]string{"A"}, "sA", "B", "sB", PhaseRetire), PhaseComplete, ""},
		"a foreign signer is a concurrent edit":         {holding{Signer: "sX", Roots: []string{"A"}}, full, "", "match no phase"},
		"intermediate only, old signer: trust in place": {holding{Signer: "sA", Roots: []string{"A"}}, inter, PhaseTrust, ""},
		"intermediate only, new signer: issue":          {holding{Signer: "sA2", Roots: []string{"A"}}, inter, PhaseIssue, ""},
		"intermediate only, issue proven: complete":     {holding{Signer: "sA2", Roots: []string{"A"}}, rec([]string{"A"}, "sA", "A", "sA2", PhaseIssue), PhaseComplete, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := derive(tc.h, tc.r)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("derive error = %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("derive = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestUnitNeedsRotation(t *testing.T) {
	done := holding{Signer: "sB", SignerRoot: "B", Roots: []string{"B"}}
	tests := map[string]struct {
		h     holding
		t     target
		start bool
		why   string
	}{
		"no CA named": {done, target{}, false, "no new CA given"},
		"same root, same intermediate: nothing to do": {done, target{Root: "B", Signer: "sB"}, false, "already signs"},
		"same root, meshca to issue: nothing to do":   {done, target{Root: "B"}, false, "already signs"},
		"same root, new intermediate: renewal":        {done, target{Root: "B", Signer: "sB2"}, true, "wanted intermediate"},
		"another root":                                {done, target{Root: "C"}, true, "wanted root"},
		"another root with its intermediate":          {done, target{Root: "C", Signer: "sC"}, true, "wanted intermediate"},
		"old root still trusted":                      {holding{Signer: "sB", SignerRoot: "B", Roots: []string{"A", "B"}}, target{Root: "B", Signer: "sB"}, true, "alone"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			start, why := needsRotation(tc.h, tc.t)
			if start != tc.start || !strings.Contains(why, tc.why) {
				t.Errorf("needsRotation = %v, %q; want %v, saying %q", start, why, tc.start, tc.why)
			}
		})
	}
}

func TestUnitInProgressAndPhaseWork(t *testing.T) {
	r := rec([]string{"A"}, "sA", "B", "sB")
	if !inProgress(r, PhaseIssue) || inProgress(r, PhaseComplete) || inProgress(nil, PhaseNone) {
		t.Error("inProgress: a recorded rotation is in progress until complete, no record is none")
	}
	back := time.Now()
	r.RolledBack = &back
	if inProgress(r, PhaseNone) {
		t.Error("a rolled-back rotation is history")
	}
	inter := rec([]string{"A"}, "sA", "A", "sA2")
	for p, want := range map[Phase]bool{PhaseTrust: false, PhaseIssue: true, PhaseRetire: false} {
		if got := phaseWork(inter, p); got != want {
			t.Errorf("intermediate only, phaseWork(%s) = %v, want %v", p, got, want)
		}
		if !phaseWork(r, p) {
			t.Errorf("full rotation, phase %s has work", p)
		}
	}
}

func TestUnitExpectation(t *testing.T) {
	r := rec([]string{"A"}, "sA", "B", "sB")
	tests := map[Phase]struct {
		roots  []string
		signer string
	}{
		PhaseNone:   {[]string{"A"}, "sA"},
		PhaseTrust:  {[]string{"A", "B"}, "sA"},
		PhaseIssue:  {[]string{"A", "B"}, "sB"},
		PhaseRetire: {[]string{"B"}, "sB"},
	}
	for p, want := range tests {
		exp := expectation(r, p, []byte("x"))
		if diff := cmp.Diff(want.roots, exp.Roots); diff != "" || exp.Signer != want.signer {
			t.Errorf("phase %s: roots diff %s, signer %s want %s", p, diff, exp.Signer, want.signer)
		}
		if exp.RootCertSHA256 == "" {
			t.Errorf("phase %s: the ConfigMap bytes are not expected", p)
		}
	}
	if got := expectation(rec([]string{"A"}, "sA", "A", "sA2"), PhaseIssue, nil).Roots; !cmp.Equal(got, []string{"A"}) {
		t.Errorf("intermediate only: roots %v, want the one root once", got)
	}
}

func TestUnitNextAction(t *testing.T) {
	r := rec([]string{"A"}, "sA", "B", "sB", PhaseTrust)
	tests := map[string]struct {
		p    Phase
		r    *Record
		want string
	}{
		"nothing recorded":            {PhaseNone, nil, "nothing in progress"},
		"trust proven":                {PhaseTrust, r, "write the issue bundle"},
		"trust written, not proven":   {PhaseTrust, rec([]string{"A"}, "sA", "B", "sB"), "finish phase trust"},
		"complete is history":         {PhaseComplete, r, "starts a new one"},
		"intermediate only, at start": {PhaseTrust, rec([]string{"A"}, "sA", "A", "sA2"), "same root"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := nextAction(tc.p, tc.r); !strings.Contains(got, tc.want) {
				t.Errorf("nextAction = %q, want it to say %q", got, tc.want)
			}
		})
	}
}

func TestUnitSummaryFromEvents(t *testing.T) {
	var s Summary
	for _, ev := range []Event{
		{Kind: EventRestartStarted, Cluster: "c", Phase: PhaseTrust, Workload: "daemonset/istio-system/ztunnel", Reason: ReasonCAChannel},
		{Kind: EventRestartFinished, Cluster: "c", Phase: PhaseTrust, Workload: "daemonset/istio-system/ztunnel", Duration: 3},
		{Kind: EventPhaseProven, Cluster: "c", Phase: PhaseTrust, Duration: 10, Waiting: 8},
		{Kind: EventNothingToDo, Cluster: "c", Phase: PhaseRetire},
		{Kind: EventRestartStarted, Cluster: "c", Phase: PhaseIssue, Workload: "daemonset/istio-system/ztunnel", Reason: ReasonLagging},
	} {
		s.Add(ev)
	}
	if n := s.RestartsOf("daemonset/istio-system/ztunnel"); n != 2 {
		t.Errorf("ztunnel restarts = %d, want 2", n)
	}
	want := []Step{{Cluster: "c", Phase: PhaseTrust, Action: "phase trust", Duration: 10 * time.Second, Waiting: 8 * time.Second}}
	if diff := cmp.Diff(want, s.Steps); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if len(s.NothingToDo) != 1 || s.NothingToDo[0].Phase != PhaseRetire {
		t.Errorf("nothing-to-do phases = %+v, want retire", s.NothingToDo)
	}
}

// TestUnitEventJSONSchema pins the JSON field names of the event stream
// (`meshca rotate -o json`), documented on Event and in the README.
func TestUnitEventJSONSchema(t *testing.T) {
	exp := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := Event{Time: exp, Elapsed: 1.5, Kind: EventConverging, Cluster: "east", Phase: PhaseIssue, Workload: "daemonset/istio-system/ztunnel",
		Object: "istio-system/cacerts", Converged: 3, Total: 4, Expected: &exp, Duration: 2, Waiting: 1, NewRoot: "r", NewSigner: "s", Reason: ReasonLagging, Detail: "d"}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	want := []string{"cluster", "converged", "detail", "duration", "elapsed", "expected", "kind", "newRoot", "newSigner", "object", "phase", "reason", "time", "total", "waiting", "workload"}
	if diff := cmp.Diff(want, keys, cmpSorted); diff != "" {
		t.Errorf("event JSON keys (-want +got):\n%s", diff)
	}
	if m["kind"] != "converging" {
		t.Errorf("kind = %v", m["kind"])
	}
}

var cmpSorted = cmpopts.SortSlices(func(a, b string) bool { return a < b })

func TestUnitReplicasLag(t *testing.T) {
	root := pkitest.Root(t, pki.ECDSAP256)
	oldInter := pkitest.Intermediate(t, root, pki.ECDSAP256, "old")
	newInter := pkitest.Intermediate(t, root, pki.ECDSAP256, "new")
	now := time.Now()
	fresh := pkitest.Leaf(t, newInter, "spiffe://cluster.local/ns/istio-system/sa/istiod", now, time.Hour)
	stale := pkitest.Leaf(t, oldInter, "spiffe://cluster.local/ns/istio-system/sa/istiod", now, time.Hour)
	reps := []Replica{
		{Pod: "istiod-a", Chain: []*x509.Certificate{fresh.Cert, newInter.Cert}},
		{Pod: "istiod-b", Chain: []*x509.Certificate{stale.Cert, oldInter.Cert}},
		{Pod: "istiod-c", Err: errors.New("connection refused")},
	}
	got := replicasLag(reps, newInter.Cert)
	for _, want := range []string{"pod istiod-b (serves a certificate from intermediate " + pki.ShortFingerprint(oldInter.Cert), "pod istiod-c (connection refused)"} {
		if !strings.Contains(got, want) {
			t.Errorf("replicasLag = %q, want it to name %q", got, want)
		}
	}
	if strings.Contains(got, "istiod-a") {
		t.Errorf("a replica serving from the new intermediate is named: %q", got)
	}
	if got := replicasLag(reps[:1], newInter.Cert); got != "" {
		t.Errorf("replicasLag of an up-to-date replica = %q, want empty", got)
	}
}
