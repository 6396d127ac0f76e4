package htmlreport

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/report/htmlreport/browsertest"
)

// TestRenderRoundTrip: the page carries its model, one band per phase, a
// restart bar per restart and a curve per proxy kind present, and no
// script but the data block.
func TestRenderRoundTrip(t *testing.T) {
	m := synthetic(200)
	var buf bytes.Buffer
	if err := Render(&buf, m); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	back, err := ReadModel("page", buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(m, back); d != "" {
		t.Errorf("model read back from the page differs (-want +got):\n%s", d)
	}
	for _, want := range []struct {
		what string
		n    int
	}{{`<g class="band phase-`, 3}, {`<rect class="restart `, 3}, {`<polyline class="series kind-`, 4}, {`class="series probe-`, 4}, {"<script", 1}} {
		if got := strings.Count(page, want.what); got != want.n {
			t.Errorf("%d × %q in the page, want %d", got, want.what, want.n)
		}
	}
	for _, bad := range []string{"http://", "https://", "<link", "@import", "url("} {
		if strings.Contains(strings.ReplaceAll(page, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
			t.Errorf("the page refers to an external resource (%q)", bad)
		}
	}
}

// TestEscaping: text from the cluster (a workload name, an event detail) is
// escaped in the HTML and in the SVG.
func TestEscaping(t *testing.T) {
	m := synthetic(20)
	m.Clusters[0].Restarts[0].Workload = `Deployment/ns/<img src=x onerror=alert(1)>`
	m.Clusters[0].Markers[0].Detail = `</script><script>alert(1)</script>`
	m.Clusters[0].Findings[0].Problem = `<b>bold</b>`
	var buf bytes.Buffer
	if err := Render(&buf, m); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"<img", "<script>alert", "<b>bold"} {
		if strings.Contains(buf.String(), bad) {
			t.Errorf("unescaped %q in the page", bad)
		}
	}
	if _, err := ReadModel("page", buf.Bytes()); err != nil {
		t.Errorf("the data block was broken by the text: %v", err)
	}
}

// TestValidHTML runs Debian's HTML Tidy (HTML5 mode) on a report of the
// synthetic rotation: it must report no error and no warning.
func TestValidHTML(t *testing.T) {
	tidy := browsertest.NeedTool(t, "tidy")
	var buf bytes.Buffer
	if err := Render(&buf, synthetic(100)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tidy, "-quiet", "-errors", "--show-warnings", "yes", path).CombinedOutput()
	t.Logf("tidy -quiet -errors %s: %v\n%s", path, err, out)
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("tidy found problems (exit %v):\n%s", err, out)
	}
	// The same check finds a broken page: tidy is really checking.
	broken := strings.Replace(buf.String(), "</table>", "</tabel>", 1)
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(tidy, "-quiet", "-errors", path).CombinedOutput(); err == nil {
		t.Errorf("tidy passed a page with a misspelt end tag:\n%s", out)
	}
}

// BenchmarkRender1000Proxies renders the report of a synthetic phased
// rotation of 1,000 proxies and reports its size.
func BenchmarkRender1000Proxies(b *testing.B) {
	m := synthetic(1000)
	var size int
	for b.Loop() {
		var buf bytes.Buffer
		if err := Render(&buf, m); err != nil {
			b.Fatal(err)
		}
		size = buf.Len()
	}
	b.ReportMetric(float64(size), "bytes")
	b.ReportMetric(float64(size)/1024, "KiB")
}
