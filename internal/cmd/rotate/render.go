package rotate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// textObserver prints one progress line per event.
type textObserver struct{ w io.Writer }

func (o *textObserver) Observe(ev rotate.Event) {
	elapsed := time.Duration(ev.Elapsed * float64(time.Second)).Round(100 * time.Millisecond)
	line := ev.Detail
	if line == "" {
		line = string(ev.Kind)
	}
	if ev.Cluster != "" {
		line = ev.Cluster + ": " + line
	}
	if ev.Kind == rotate.EventRefused {
		line = "✗ " + line
	}
	_, _ = fmt.Fprintf(o.w, "[%6s] %s\n", elapsed, line)
}

// jsonObserver writes each event as one JSON line.
type jsonObserver struct{ enc *json.Encoder }

func (o *jsonObserver) Observe(ev rotate.Event) { _ = o.enc.Encode(ev) }

// printPlan renders the plans of every cluster.
func printPlan(w io.Writer, pace rotate.Pace, plans []rotate.ClusterPlan) {
	for _, p := range plans {
		_, _ = fmt.Fprintf(w, "cluster %s (namespace %s): cacerts in phase %s, pace %s\n", p.Cluster, p.Namespace, p.Phase, pace)
		if p.Why != "" {
			_, _ = fmt.Fprintf(w, "  %s\n", p.Why)
		}
		if p.NewRoot != "" {
			_, _ = fmt.Fprintf(w, "  new root %.12s, new intermediate %.12s (%s)\n", p.NewRoot, p.NewSigner, p.Intermediate)
		}
		if p.Migration {
			_, _ = fmt.Fprintln(w, "  migration from istiod's self-signed CA: the trust phase creates cacerts and restarts istiod once; istio-ca-secret is backed up and never written")
		}
		if p.IntermediateOnly {
			_, _ = fmt.Fprintln(w, "  intermediate only: the root stays, so trust and retire have nothing to do; only the issue phase runs")
		}
		n, restarts := 0, 0
		last := rotate.Phase("-")
		for _, s := range p.Steps {
			if s.Phase != last && s.Phase != "" {
				_, _ = fmt.Fprintf(w, "  phase %s:\n", s.Phase)
			}
			last = s.Phase
			n++
			indent := "  "
			if s.Phase != "" {
				indent = "    "
			}
			_, _ = fmt.Fprintf(w, "%s%d. %s\n", indent, n, s.Text)
			restarts += s.Restarts
		}
		if len(p.Steps) > 0 && !p.Start && p.Phase == rotate.PhaseComplete {
			restarts = 0
		}
		if len(p.Steps) > 0 {
			_, _ = fmt.Fprintf(w, "  restarts: at most %d rollout restart(s) with pace %s\n", restarts, pace)
		}
		for _, b := range p.Warnings {
			_, _ = fmt.Fprintf(w, "  ‼ %s\n", b)
		}
		for _, b := range p.Blockers {
			_, _ = fmt.Fprintf(w, "  ✗ would refuse: %s\n", b)
		}
	}
}

// probeFigures are the sandbox probe's counters, read by name from its JSON
// so that counters the probe gains or lacks are taken as they come.
type probeFigures map[string]int64

// probeFields are the counters shown, in order.
var probeFields = []string{"handshakes", "failures", "refused", "resets", "issuanceFailures", "admissionFailures"}

func readProbeFigures(ctx context.Context, dir string) probeFigures {
	snap, err := sandbox.FetchProbe(ctx, dir, false)
	if err != nil {
		return nil
	}
	data, err := json.Marshal(snap)
	if err != nil {
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil
	}
	out := probeFigures{}
	for k, v := range raw {
		var n int64
		if json.Unmarshal(v, &n) == nil {
			out[k] = n
		}
	}
	return out
}

func (f probeFigures) minus(o probeFigures) probeFigures {
	out := probeFigures{}
	for k, v := range f {
		if ov, ok := o[k]; ok {
			out[k] = v - ov
		}
	}
	return out
}

// probeRow is the sandbox probe's figures over one phase of one cluster.
type probeRow struct {
	cluster string
	phase   rotate.Phase
	figures probeFigures
}

// probeObserver snapshots the sandbox probe when a phase starts and when it
// is proven.
type probeObserver struct {
	ctx   context.Context
	dir   string
	first probeFigures
	start map[string]probeFigures
	rows  []probeRow
}

func newProbeObserver(ctx context.Context, dir string) *probeObserver {
	p := &probeObserver{ctx: ctx, dir: dir, start: map[string]probeFigures{}}
	if dir != "" {
		p.first = readProbeFigures(ctx, dir)
	}
	return p
}

func (p *probeObserver) Observe(ev rotate.Event) {
	if p.dir == "" || ev.Phase == "" || ev.Cluster == "" {
		return
	}
	key := ev.Cluster + "/" + string(ev.Phase)
	switch ev.Kind {
	case rotate.EventPhaseWritten, rotate.EventIstiodWaiting, rotate.EventVerifying:
		if _, ok := p.start[key]; !ok {
			p.start[key] = readProbeFigures(p.ctx, p.dir)
		}
	case rotate.EventPhaseProven:
		if s, ok := p.start[key]; ok && s != nil {
			if now := readProbeFigures(p.ctx, p.dir); now != nil {
				p.rows = append(p.rows, probeRow{cluster: ev.Cluster, phase: ev.Phase, figures: now.minus(s)})
			}
		}
	}
}

// total is the probe's figures over the whole run.
func (p *probeObserver) total() probeFigures {
	if p.dir == "" || p.first == nil {
		return nil
	}
	now := readProbeFigures(p.ctx, p.dir)
	if now == nil {
		return nil
	}
	return now.minus(p.first)
}

// printSummary renders the steps, the restarts per workload and, with a
// sandbox, the probe's figures per phase.
func printSummary(w io.Writer, s rotate.Summary, probe *probeObserver) {
	if len(s.Steps) > 0 {
		_, _ = fmt.Fprintln(w)
		t := report.NewTable(w, "CLUSTER", "STEP", "DURATION", "WAITING (ROLLOUTS, ISTIOD, REFRESH)", "MESHCA'S OWN WORK")
		var total, waiting time.Duration
		for _, st := range s.Steps {
			t.Row(st.Cluster, st.Action, st.Duration.Round(100*time.Millisecond).String(), st.Waiting.Round(100*time.Millisecond).String(), (st.Duration - st.Waiting).Round(100*time.Millisecond).String())
			total += st.Duration
			waiting += st.Waiting
		}
		for _, st := range s.NothingToDo {
			t.Row(st.Cluster, st.Action, "-", "-", "nothing to do (intermediate only)")
		}
		t.Row("", "total", total.Round(100*time.Millisecond).String(), waiting.Round(100*time.Millisecond).String(), (total - waiting).Round(100*time.Millisecond).String())
		_ = t.Flush()
	}
	if len(s.Steps) > 0 || len(s.Restarts) > 0 {
		_, _ = fmt.Fprintln(w)
		if len(s.Restarts) == 0 {
			_, _ = fmt.Fprintln(w, "restarts: none")
		} else {
			t := report.NewTable(w, "CLUSTER", "PHASE", "RESTARTED WORKLOAD", "REASON", "RESTARTS")
			rs := append([]rotate.Restart(nil), s.Restarts...)
			sort.SliceStable(rs, func(i, j int) bool { return rs[i].Cluster < rs[j].Cluster })
			for _, r := range rs {
				t.Row(r.Cluster, string(r.Phase), r.Workload, r.Reason, fmt.Sprint(r.Count))
			}
			_ = t.Flush()
		}
	}
	if probe == nil || probe.dir == "" {
		return
	}
	fields := func(f probeFigures) []string {
		var out []string
		for _, k := range probeFields {
			if v, ok := f[k]; ok {
				out = append(out, fmt.Sprint(v))
			} else {
				out = append(out, "n/a")
			}
		}
		return out
	}
	if len(probe.rows) > 0 {
		_, _ = fmt.Fprintln(w)
		t := report.NewTable(w, append([]string{"CLUSTER", "PHASE"}, upper(probeFields)...)...)
		for _, r := range probe.rows {
			t.Row(append([]string{r.cluster, string(r.phase)}, fields(r.figures)...)...)
		}
		_ = t.Flush()
	}
	if tot := probe.total(); tot != nil {
		_, _ = fmt.Fprintf(w, "\nsandbox probe during the rotation: %d mTLS handshakes, %d failed", tot["handshakes"], tot["failures"])
		for _, k := range probeFields[2:] {
			if v, ok := tot[k]; ok {
				_, _ = fmt.Fprintf(w, ", %d %s", v, k)
			}
		}
		_, _ = fmt.Fprintln(w)
	}
}

func upper(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToUpper(s)
	}
	return out
}
