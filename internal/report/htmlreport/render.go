package htmlreport

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"regexp"
	"sort"
	"time"
)

//go:embed report.html.tmpl
var pageTemplate string

//go:embed report.css
var pageCSS string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"when":     when,
	"whenp":    whenPtr,
	"dur":      duration,
	"statuses": statuses,
	"kinds":    kinds,
	"took":     func(from time.Time, to *time.Time) string { return duration(&from, to) },
}).Parse(pageTemplate))

// ModelID is the id of the data block holding the Model's JSON.
const ModelID = "meshca-report-model"

// Render writes m as one self-contained HTML page.
func Render(w io.Writer, m *Model) error {
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode the report model: %w", err)
	}
	var buf bytes.Buffer
	err = page.Execute(&buf, struct {
		*Model
		CSS      template.CSS
		Timeline template.HTML
		JSON     template.HTML
	}{m, template.CSS(pageCSS), svg(m), dataBlock(data)})
	if err != nil {
		return fmt.Errorf("render the report: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// dataBlock wraps the model's JSON in a data block. encoding/json writes
// <, > and & as \u escapes, so nothing in it can end the element early.
func dataBlock(data []byte) template.HTML {
	return template.HTML(`<script type="application/json" id="` + ModelID + `">` + string(data) + `</script>`) //nolint:gosec // see above
}

var modelBlock = regexp.MustCompile(`(?s)<script type="application/json" id="` + ModelID + `">(.*?)</script>`)

// ReadModel reads the Model embedded in a report page.
func ReadModel(name string, page []byte) (*Model, error) {
	m := modelBlock.FindSubmatch(page)
	if m == nil {
		return nil, fmt.Errorf("%s: no meshca report model in it (is it a report written by meshca?)", name)
	}
	var out Model
	if err := json.Unmarshal(m[1], &out); err != nil {
		return nil, fmt.Errorf("%s: the report model does not parse: %w", name, err)
	}
	return &out, nil
}

func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 MST")
}

func whenPtr(t *time.Time) string {
	if t == nil {
		return "—"
	}
	return when(*t)
}

func duration(from, to *time.Time) string {
	if from == nil || to == nil {
		return "—"
	}
	return to.Sub(*from).Round(100 * time.Millisecond).String()
}

// statusCount is how many proxies have one status.
type statusCount struct {
	Status string
	N      int
}

func statuses(rows []FleetRow) []statusCount {
	n := map[string]int{}
	for _, r := range rows {
		n[r.Status]++
	}
	var out []statusCount
	for s, c := range n {
		out = append(out, statusCount{s, c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Status < out[j].Status })
	return out
}

// kinds lists the proxy kinds present in a cluster's convergence, for the
// legend.
func kinds(ss []Series) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Kind)
	}
	return out
}
