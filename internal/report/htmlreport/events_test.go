package htmlreport

import (
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/rotate"
)

// TestBuilderFoldsEvents: restarts pair their start and end, each kind's
// curve closes at the proof with every proxy of the kind, a refusal is a
// finding, and a cluster the events name but no record knows gets its
// phases from the events.
func TestBuilderFoldsEvents(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	b := NewBuilder()
	for _, ev := range []rotate.Event{
		{Time: at(0), Kind: rotate.EventPhaseWritten, Cluster: "east", Phase: rotate.PhaseTrust},
		{Time: at(1), Kind: rotate.EventIstiodReloaded, Cluster: "east", Phase: rotate.PhaseTrust},
		{Time: at(2), Kind: rotate.EventRestartStarted, Cluster: "east", Phase: rotate.PhaseTrust, Workload: "DaemonSet/istio-system/ztunnel", Reason: rotate.ReasonCAChannel},
		{Time: at(3), Kind: rotate.EventLagging, Cluster: "east", Phase: rotate.PhaseTrust, Converged: 1, Total: 4,
			Kinds: []rotate.KindCount{{Kind: "waypoint", Converged: 1, Total: 1}, {Kind: "ztunnel", Converged: 0, Total: 3}}},
		{Time: at(5), Kind: rotate.EventRestartFinished, Cluster: "east", Phase: rotate.PhaseTrust, Workload: "DaemonSet/istio-system/ztunnel", Reason: rotate.ReasonCAChannel},
		{Time: at(6), Kind: rotate.EventPhaseProven, Cluster: "east", Phase: rotate.PhaseTrust},
		{Time: at(7), Kind: rotate.EventStopped, Phase: rotate.PhaseTrust},
		{Time: at(8), Kind: rotate.EventRefused, Cluster: "west", Phase: rotate.PhaseIssue, Detail: "refusing: fix it"},
	} {
		b.Observe(ev)
	}
	m := &Model{Clusters: []Cluster{{Name: "east"}}}
	b.Apply(m)
	if !m.HasEvents || !m.Start.Equal(at(0)) || !m.End.Equal(at(8)) {
		t.Errorf("axis %s..%s, has events %v; want %s..%s, true", m.Start, m.End, m.HasEvents, at(0), at(8))
	}
	east := m.Clusters[0]
	if len(east.Restarts) != 1 || east.Restarts[0].End == nil || !east.Restarts[0].End.Equal(at(5)) {
		t.Errorf("restarts %+v; want one from 2 s to 5 s", east.Restarts)
	}
	if len(east.Convergence) != 2 || east.Convergence[0].Kind != "ztunnel" || east.Convergence[1].Kind != "waypoint" {
		t.Fatalf("convergence %+v; want ztunnel then waypoint", east.Convergence)
	}
	last := east.Convergence[0].Points[len(east.Convergence[0].Points)-1]
	if last.Converged != 3 || last.Total != 3 || !last.Time.Equal(at(6)) {
		t.Errorf("ztunnel's curve ends at %+v; want 3/3 at the proof", last)
	}
	kinds := map[string]int{}
	for _, mk := range east.Markers {
		kinds[mk.Kind]++
	}
	if kinds[MarkWrite] != 1 || kinds[MarkReload] != 1 || kinds[MarkProven] != 1 || kinds[MarkStopped] != 1 {
		t.Errorf("markers %v", kinds)
	}
	if len(m.Clusters) != 2 || m.Clusters[1].Name != "west" || len(m.Clusters[1].Findings) != 1 || len(m.Clusters[1].Bands) != 0 {
		t.Errorf("clusters %+v; want west added with the refusal as a finding", m.Clusters)
	}
	if len(m.Known()[1].Findings) != 0 {
		t.Errorf("a refusal from the events is part of Known(): %+v", m.Known()[1].Findings)
	}
}

// TestReadEvents names the file and line of what is not an event.
func TestReadEvents(t *testing.T) {
	evs, err := ReadEvents("ok.jsonl", strings.NewReader(`{"time":"2026-12-02T06:00:00Z","elapsed":0,"kind":"state","cluster":"east"}`+"\n\n"))
	if err != nil || len(evs) != 1 || evs[0].Cluster != "east" {
		t.Errorf("ReadEvents = %+v, %v", evs, err)
	}
	for _, bad := range []string{"not json\n", `{"kind":"state"}` + "\n", `{"phases":[]}` + "\n"} {
		_, err := ReadEvents("bad.jsonl", strings.NewReader(`{"time":"2026-12-02T06:00:00Z","kind":"state"}`+"\n"+bad))
		if err == nil || !strings.Contains(err.Error(), "bad.jsonl:2") {
			t.Errorf("ReadEvents(%q) error = %v; want one naming bad.jsonl:2", bad, err)
		}
	}
}
