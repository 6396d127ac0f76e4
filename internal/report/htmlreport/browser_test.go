package htmlreport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshca/meshca/internal/report/htmlreport/browsertest"
)

// TestScreenshot opens the report of a synthetic phased rotation in
// headless Chromium, light and dark: no console error, one band per phase,
// and a screenshot saved in the test's directory.
func TestScreenshot(t *testing.T) {
	chromium := browsertest.NeedTool(t, "chromium", "chromium-browser")
	m := synthetic(60)
	// MESHCA_SCREENSHOT_DIR keeps the page and its screenshots after the
	// test (its temporary directory is removed).
	dir := os.Getenv("MESHCA_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "report.html")
	var buf bytes.Buffer
	if err := Render(&buf, m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dark := range []bool{false, true} {
		got, err := browsertest.Open(context.Background(), chromium, path, dark)
		if err != nil {
			t.Fatal(err)
		}
		browsertest.Check(t, got, BandsPerCluster(m))
		png := filepath.Join(dir, fmt.Sprintf("report-dark-%v.png", dark))
		if err := os.WriteFile(png, got.Screenshot, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot (dark %v): %s, page %dx%d CSS px, %d bytes PNG", dark, png, got.Width, got.Height, len(got.Screenshot))
	}
}
