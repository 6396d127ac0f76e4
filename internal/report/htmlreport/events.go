package htmlreport

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/rotate"
)

// Builder folds the rotation engine's events into the parts of a report
// only the events know: the instants of the timeline, the restarts and the
// convergence of each proxy kind. It is a rotate.Observer.
type Builder struct {
	order    []string
	clusters map[string]*fold
	// stopped holds cluster-less stop events, drawn on every cluster.
	stopped []Marker
	first   time.Time
	last    time.Time
}

// fold is one cluster's events.
type fold struct {
	markers  []Marker
	restarts []RestartSpan
	series   map[string]*Series
	kinds    []string
	// totals is the last known count per kind, to close a phase's curves
	// at its proof.
	totals   map[string]int
	findings []Finding
	bands    []Band
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder { return &Builder{clusters: map[string]*fold{}} }

func (b *Builder) cluster(name string) *fold {
	f := b.clusters[name]
	if f == nil {
		f = &fold{series: map[string]*Series{}, totals: map[string]int{}}
		b.clusters[name] = f
		b.order = append(b.order, name)
	}
	return f
}

// Observe folds one event.
func (b *Builder) Observe(ev rotate.Event) {
	t := ev.Time.UTC()
	if b.first.IsZero() || t.Before(b.first) {
		b.first = t
	}
	if t.After(b.last) {
		b.last = t
	}
	phase := string(ev.Phase)
	if ev.Cluster == "" {
		if ev.Kind == rotate.EventStopped {
			b.stopped = append(b.stopped, Marker{Time: t, Kind: MarkStopped, Phase: phase, Detail: ev.Detail})
		}
		return
	}
	f := b.cluster(ev.Cluster)
	switch ev.Kind {
	case rotate.EventPhaseWritten:
		f.markers = append(f.markers, Marker{Time: t, Kind: MarkWrite, Phase: phase, Detail: ev.Detail})
		f.band(phase).Written = &t
	case rotate.EventIstiodReloaded:
		f.markers = append(f.markers, Marker{Time: t, Kind: MarkReload, Phase: phase, Detail: ev.Detail})
		if bd := f.band(phase); bd.Reloaded == nil {
			bd.Reloaded = &t
		}
	case rotate.EventPhaseProven:
		f.markers = append(f.markers, Marker{Time: t, Kind: MarkProven, Phase: phase, Detail: ev.Detail})
		f.band(phase).Proven = &t
		for _, k := range f.kinds {
			if n := f.totals[k]; n > 0 {
				f.point(k, Point{Time: t, Phase: phase, Converged: n, Total: n})
			}
		}
	case rotate.EventRefused:
		f.markers = append(f.markers, Marker{Time: t, Kind: MarkRefused, Phase: phase, Detail: ev.Detail})
		f.findings = append(f.findings, Finding{Subject: eventSubject, Problem: ev.Detail,
			Fix: "the refusal above says what to do; nothing was changed past it, and meshca rotate continues from what the cluster holds once it is fixed"})
	case rotate.EventRolledBack:
		f.markers = append(f.markers, Marker{Time: t, Kind: MarkRollback, Phase: phase, Detail: ev.Detail})
	case rotate.EventRestartStarted:
		f.restarts = append(f.restarts, RestartSpan{Workload: ev.Workload, Phase: phase, Reason: ev.Reason, Start: t})
	case rotate.EventRestartFinished:
		for i := len(f.restarts) - 1; i >= 0; i-- {
			r := &f.restarts[i]
			if r.End == nil && r.Workload == ev.Workload && r.Phase == phase {
				r.End = &t
				break
			}
		}
	case rotate.EventLagging, rotate.EventConverging:
		for _, k := range ev.Kinds {
			f.totals[k.Kind] = k.Total
			f.point(k.Kind, Point{Time: t, Phase: phase, Converged: k.Converged, Total: k.Total})
		}
	}
}

// band returns the band of phase, adding it.
func (f *fold) band(phase string) *Band {
	for i := range f.bands {
		if f.bands[i].Phase == phase {
			return &f.bands[i]
		}
	}
	f.bands = append(f.bands, Band{Phase: phase})
	return &f.bands[len(f.bands)-1]
}

func (f *fold) point(kind string, p Point) {
	s := f.series[kind]
	if s == nil {
		s = &Series{Kind: kind}
		f.series[kind] = s
		f.kinds = append(f.kinds, kind)
	}
	s.Points = append(s.Points, p)
}

// Apply adds what the events know to m: markers, restarts, convergence and
// refusals of the clusters in m, and clusters the events name that m lacks
// (a run refused before anything was recorded), with phases taken from the
// events. It widens m's time axis to the events'.
func (b *Builder) Apply(m *Model) {
	m.HasEvents = true
	widen(m, b.first, b.last)
	for _, name := range b.order {
		f := b.clusters[name]
		var c *Cluster
		for i := range m.Clusters {
			if m.Clusters[i].Name == name {
				c = &m.Clusters[i]
			}
		}
		if c == nil {
			m.Clusters = append(m.Clusters, Cluster{Name: name, Bands: f.bands})
			c = &m.Clusters[len(m.Clusters)-1]
		}
		c.Markers = append(append(c.Markers, f.markers...), b.stopped...)
		c.Restarts = append(c.Restarts, f.restarts...)
		for _, k := range kindOrder(f.kinds) {
			c.Convergence = append(c.Convergence, *f.series[k])
		}
		c.Findings = append(c.Findings, f.findings...)
	}
}

// kindOrder sorts proxy kinds in the order of mesh.Kinds, unknown last.
func kindOrder(kinds []string) []string {
	out := slices.Clone(kinds)
	slices.SortStableFunc(out, func(a, b string) int { return cmp.Compare(mesh.Kind(a).Order(), mesh.Kind(b).Order()) })
	return out
}

// widen extends m's time axis to include [first, last].
func widen(m *Model, first, last time.Time) {
	if !first.IsZero() && (m.Start.IsZero() || first.Before(m.Start)) {
		m.Start = first
	}
	if last.After(m.End) {
		m.End = last
	}
}

// ReadEvents reads an event stream written by `meshca rotate -o json`: one
// JSON event per line; blank lines are skipped.
func ReadEvents(name string, r io.Reader) ([]rotate.Event, error) {
	var out []rotate.Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		var ev rotate.Event
		if err := json.Unmarshal(text, &ev); err != nil {
			return nil, fmt.Errorf("%s:%d: not an event of meshca rotate -o json: %w", name, line, err)
		}
		if ev.Kind == "" || ev.Time.IsZero() {
			return nil, fmt.Errorf("%s:%d: not an event of meshca rotate -o json (no kind or time): write the stream with meshca rotate -o json > FILE", name, line)
		}
		out = append(out, ev)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}
