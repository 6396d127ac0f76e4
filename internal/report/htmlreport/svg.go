package htmlreport

import (
	"fmt"
	"html"
	"html/template"
	"math"
	"strings"
	"time"
)

// Geometry of the timeline, in SVG user units.
const (
	svgWidth     = 1100
	labelWidth   = 180
	rightMargin  = 24
	plotWidth    = svgWidth - labelWidth - rightMargin
	bandHeight   = 28
	markerHeight = 24
	restartRow   = 15
	chartHeight  = 110
	gap          = 10
	// maxRestartRows bounds the restart lanes drawn per cluster; the rest
	// are counted in one line (the fleet table lists them all).
	maxRestartRows = 40
)

// svg draws the timeline of m: per cluster the phases as bands, the cacerts
// writes, istiod reloads and proofs, the restarts and the convergence of each
// proxy kind; then the sandbox probe's handshakes, failures, refused
// connections and resets, all on one time axis.
func svg(m *Model) template.HTML {
	d := &drawing{m: m}
	span := m.End.Sub(m.Start)
	if span <= 0 {
		span = time.Second
	}
	d.span = span
	y := 0
	for _, c := range m.Clusters {
		y = d.cluster(c, y)
	}
	if len(m.Probe) > 1 {
		y = d.probe(y)
	}
	y = d.axis(y)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="Rotation timeline">`, svgWidth, y, svgWidth, y)
	b.WriteString(`<title>Rotation timeline</title>`)
	b.WriteString(d.grid(y))
	b.WriteString(d.b.String())
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // every text in it goes through esc
}

type drawing struct {
	m    *Model
	span time.Duration
	b    strings.Builder
	// axisTop is where the tick lines start (below nothing: 0).
	ticks []time.Duration
}

// x is the horizontal position of t.
func (d *drawing) x(t time.Time) float64 {
	f := float64(t.Sub(d.m.Start)) / float64(d.span)
	return labelWidth + math.Max(0, math.Min(1, f))*plotWidth
}

func esc(s string) string { return html.EscapeString(s) }

func (d *drawing) label(y int, text, class string) {
	if r := []rune(text); len(r) > 26 {
		text = string(r[:25]) + "…"
	}
	fmt.Fprintf(&d.b, `<text class="lane %s" x="%d" y="%d">%s</text>`, class, labelWidth-8, y, esc(text))
}

// cluster draws one cluster's lanes from y and returns the next y.
func (d *drawing) cluster(c Cluster, y int) int {
	fmt.Fprintf(&d.b, `<g class="cluster" data-cluster="%s">`, esc(c.Name))
	fmt.Fprintf(&d.b, `<text class="cluster-name" x="4" y="%d">%s</text>`, y+16, esc("cluster "+c.Name))
	y += 24
	// Phases.
	d.label(y+bandHeight/2+4, "phases", "")
	for _, b := range c.Bands {
		start, end, open := bandSpan(b, d.m.End)
		if start == nil {
			continue
		}
		x0, x1 := d.x(*start), d.x(end)
		w := math.Max(x1-x0, 3)
		name := b.Phase
		if c.Strategy == "one-step" {
			name += " (one-step)"
		}
		cls := "band phase-" + esc(b.Phase)
		if open {
			cls += " open"
		}
		fmt.Fprintf(&d.b, `<g class="%s" data-phase="%s"><rect x="%.1f" y="%d" width="%.1f" height="%d" rx="3"/><title>%s</title>`,
			cls, esc(b.Phase), x0, y, w, bandHeight, esc(bandTitle(name, b)))
		if w > float64(7*len(name)) {
			fmt.Fprintf(&d.b, `<text class="band-label" x="%.1f" y="%d">%s</text>`, x0+w/2, y+bandHeight/2+4, esc(name))
		}
		d.b.WriteString(`</g>`)
	}
	y += bandHeight + gap
	// Writes, reloads, proofs and refusals.
	if len(c.Markers) > 0 {
		d.label(y+markerHeight/2+4, "cacerts · istiod · proof", "")
		mid := float64(y + markerHeight/2)
		for _, mk := range c.Markers {
			d.marker(mk, d.x(mk.Time), mid)
		}
		y += markerHeight + gap
	}
	// Restarts.
	for i, r := range c.Restarts {
		if i == maxRestartRows {
			fmt.Fprintf(&d.b, `<text class="lane" x="%d" y="%d">%s</text>`, labelWidth-8, y+11, esc(fmt.Sprintf("+%d more restarts", len(c.Restarts)-maxRestartRows)))
			y += restartRow
			break
		}
		end := d.m.End
		if r.End != nil {
			end = *r.End
		}
		x0, x1 := d.x(r.Start), d.x(end)
		d.label(y+11, shortWorkload(r.Workload), "restart-label")
		title := fmt.Sprintf("restart %s (phase %s, %s): %s", r.Workload, r.Phase, r.Reason, r.Start.Format(time.TimeOnly))
		if r.End != nil {
			title += fmt.Sprintf(" → %s (%s)", r.End.Format(time.TimeOnly), r.End.Sub(r.Start).Round(100*time.Millisecond))
		} else {
			title += " → did not finish"
		}
		fmt.Fprintf(&d.b, `<rect class="restart reason-%s" x="%.1f" y="%d" width="%.1f" height="%d" rx="2"><title>%s</title></rect>`,
			esc(r.Reason), x0, y+2, math.Max(x1-x0, 2), restartRow-4, esc(title))
		y += restartRow
	}
	if len(c.Restarts) > 0 {
		y += gap
	}
	// Convergence per kind; a fleet that held each phase at its first
	// verification has nothing to draw and gets a line saying so.
	if len(c.Convergence) > 0 && !d.visible(c.Convergence) {
		d.label(y+11, "proxies holding the phase", "")
		fmt.Fprintf(&d.b, `<text class="small" x="%d" y="%d">%s</text>`, labelWidth+4, y+11, esc("every proxy held the phase when first verified: no curve to draw"))
		y += restartRow + gap
	}
	if d.visible(c.Convergence) {
		y = d.chart(y, "proxies holding the phase", "100%", func(top float64) {
			for k, s := range c.Convergence {
				var pts []string
				for i, p := range s.Points {
					f := 0.0
					if p.Total > 0 {
						f = float64(p.Converged) / float64(p.Total)
					}
					// Each kind 2.5 units lower than the one before, so
					// that kinds at the same share stay visible.
					py := top + chartHeight - f*chartHeight + float64(k)*2.5
					px := d.x(p.Time)
					if i > 0 {
						pts = append(pts, fmt.Sprintf("%.1f,%s", px, strings.Split(pts[len(pts)-1], ",")[1]))
					}
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, py))
				}
				fmt.Fprintf(&d.b, `<polyline class="series kind-%s" points="%s"><title>%s</title></polyline>`, esc(s.Kind), strings.Join(pts, " "), esc(seriesTitle(s)))
			}
		})
	}
	d.b.WriteString(`</g>`)
	return y + gap
}

// visible reports whether a convergence curve spans at least 2% of the
// axis: shorter, it would be a dot at the proof.
func (d *drawing) visible(ss []Series) bool {
	for _, s := range ss {
		if n := len(s.Points); n > 1 && s.Points[n-1].Time.Sub(s.Points[0].Time) >= d.span/50 {
			return true
		}
	}
	return false
}

// chart draws a framed chart of chartHeight from y with label and the top
// value, calls draw with its top, and returns the next y.
func (d *drawing) chart(y int, label, topValue string, draw func(top float64)) int {
	d.label(y+chartHeight/2, label, "")
	fmt.Fprintf(&d.b, `<text class="lane small" x="%d" y="%d">%s</text>`, labelWidth-8, y+10, esc(topValue))
	fmt.Fprintf(&d.b, `<text class="lane small" x="%d" y="%d">0</text>`, labelWidth-8, y+chartHeight)
	fmt.Fprintf(&d.b, `<rect class="frame" x="%d" y="%d" width="%d" height="%d"/>`, labelWidth, y, plotWidth, chartHeight)
	fmt.Fprintf(&d.b, `<line class="half" x1="%d" x2="%d" y1="%d" y2="%d"/>`, labelWidth, labelWidth+plotWidth, y+chartHeight/2, y+chartHeight/2)
	draw(float64(y))
	return y + chartHeight + gap
}

// probe draws the sandbox probe: handshakes per second, then failures,
// refused connections and resets counted since the first sample.
func (d *drawing) probe(y int) int {
	s := d.m.Probe
	fmt.Fprintf(&d.b, `<g class="probe"><text class="cluster-name" x="4" y="%d">sandbox probe (simulated proxies, real mTLS)</text>`, y+16)
	y += 24
	rates := make([]float64, len(s))
	maxRate := 1.0
	for i := 1; i < len(s); i++ {
		dt := s[i].Time.Sub(s[i-1].Time).Seconds()
		if dt > 0 {
			rates[i] = float64(s[i].Handshakes-s[i-1].Handshakes) / dt
		}
		maxRate = math.Max(maxRate, rates[i])
	}
	y = d.chart(y, "handshakes per second", fmt.Sprintf("%.0f/s", maxRate), func(top float64) {
		var pts []string
		for i := 1; i < len(s); i++ {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", d.x(s[i].Time), top+chartHeight-rates[i]/maxRate*chartHeight))
		}
		fmt.Fprintf(&d.b, `<polyline class="series probe-handshakes" points="%s"><title>handshakes per second between samples</title></polyline>`, strings.Join(pts, " "))
	})
	first := s[0]
	counters := []struct {
		name string
		get  func(ProbeSample) int64
	}{
		{"failures", func(p ProbeSample) int64 { return p.Failures - first.Failures }},
		{"refused", func(p ProbeSample) int64 { return p.Refused - first.Refused }},
		{"resets", func(p ProbeSample) int64 { return p.Resets - first.Resets }},
	}
	var maxN int64 = 1
	for _, p := range s {
		for _, c := range counters {
			maxN = max(maxN, c.get(p))
		}
	}
	y = d.chart(y, "failed · refused · resets", fmt.Sprint(maxN), func(top float64) {
		for _, c := range counters {
			var pts []string
			for i, p := range s {
				py := top + chartHeight - float64(c.get(p))/float64(maxN)*chartHeight
				if i > 0 {
					pts = append(pts, fmt.Sprintf("%.1f,%s", d.x(p.Time), strings.Split(pts[len(pts)-1], ",")[1]))
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", d.x(p.Time), py))
			}
			last := c.get(s[len(s)-1])
			fmt.Fprintf(&d.b, `<polyline class="series probe-%s" points="%s"><title>%s since the first sample: %d</title></polyline>`, c.name, strings.Join(pts, " "), c.name, last)
		}
	})
	d.b.WriteString(`</g>`)
	return y
}

// marker draws one instant.
func (d *drawing) marker(mk Marker, x, y float64) {
	title := fmt.Sprintf("%s %s: %s", mk.Time.Format(time.TimeOnly), mk.Kind, mk.Detail)
	cls := "marker mark-" + mk.Kind
	switch mk.Kind {
	case MarkWrite:
		fmt.Fprintf(&d.b, `<polygon class="%s" points="%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f"><title>%s</title></polygon>`, cls, x, y-8, x+6, y, x, y+8, x-6, y, esc(title))
	case MarkReload:
		fmt.Fprintf(&d.b, `<circle class="%s" cx="%.1f" cy="%.1f" r="5"><title>%s</title></circle>`, cls, x, y, esc(title))
	case MarkProven:
		fmt.Fprintf(&d.b, `<polyline class="%s" points="%.1f,%.1f %.1f,%.1f %.1f,%.1f"><title>%s</title></polyline>`, cls, x-6, y, x-1, y+6, x+7, y-7, esc(title))
	case MarkRefused:
		fmt.Fprintf(&d.b, `<path class="%s" d="M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f"><title>%s</title></path>`, cls, x-6, y-6, x+6, y+6, x-6, y+6, x+6, y-6, esc(title))
	default:
		fmt.Fprintf(&d.b, `<rect class="%s" x="%.1f" y="%.1f" width="8" height="8"><title>%s</title></rect>`, cls, x-4, y-4, esc(title))
	}
}

// axis draws the time ticks under everything and returns the total height.
func (d *drawing) axis(y int) int {
	step := tickStep(d.span)
	for t := time.Duration(0); t <= d.span; t += step {
		d.ticks = append(d.ticks, t)
		x := d.x(d.m.Start.Add(t))
		fmt.Fprintf(&d.b, `<text class="tick" x="%.1f" y="%d">%s</text>`, x, y+14, esc(clock(t)))
	}
	fmt.Fprintf(&d.b, `<text class="lane small" x="%d" y="%d">%s</text>`, labelWidth-22, y+14, esc("since "+d.m.Start.Format("15:04:05 MST")))
	return y + 22
}

// grid draws the vertical tick lines over the full height h.
func (d *drawing) grid(h int) string {
	var b strings.Builder
	for _, t := range d.ticks {
		x := d.x(d.m.Start.Add(t))
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" x2="%.1f" y1="0" y2="%d"/>`, x, x, h-22)
	}
	return b.String()
}

// tickStep picks a round step giving at most 12 ticks.
func tickStep(span time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 24 * time.Hour} {
		if span/s <= 12 {
			return s
		}
	}
	return span / 12
}

// clock formats an offset as m:ss or h:mm:ss.
func clock(t time.Duration) string {
	s := int(t.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// bandSpan is where a band starts and ends; open when not proven.
func bandSpan(b Band, end time.Time) (*time.Time, time.Time, bool) {
	start := b.Written
	if start == nil {
		start = b.Reloaded
	}
	if start == nil {
		start = b.Proven
	}
	if b.Proven != nil {
		return start, *b.Proven, false
	}
	return start, end, true
}

func bandTitle(name string, b Band) string {
	parts := []string{"phase " + name}
	for _, p := range []struct {
		what string
		t    *time.Time
	}{{"written", b.Written}, {"istiod reloaded", b.Reloaded}, {"proven", b.Proven}} {
		if p.t != nil {
			parts = append(parts, p.what+" "+p.t.Format(time.TimeOnly))
		}
	}
	if b.Proven == nil {
		parts = append(parts, "not proven")
	}
	return strings.Join(parts, ", ")
}

func seriesTitle(s Series) string {
	if len(s.Points) == 0 {
		return s.Kind
	}
	last := s.Points[len(s.Points)-1]
	return fmt.Sprintf("%s: %d/%d hold phase %s at %s", s.Kind, last.Converged, last.Total, last.Phase, last.Time.Format(time.TimeOnly))
}

// shortWorkload is the lane label of a restarted kind/namespace/name:
// namespace/name, or the name alone when that is too long (the tooltip has
// it all).
func shortWorkload(w string) string {
	parts := strings.Split(w, "/")
	if len(parts) != 3 {
		return w
	}
	if s := parts[1] + "/" + parts[2]; len(s) <= 24 {
		return s
	}
	return parts[2]
}
