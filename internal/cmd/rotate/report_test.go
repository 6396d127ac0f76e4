package rotate_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/cli"
)

// TestReportBadInputWritesNothing: meshca report without -o is a usage
// error, and an event file that is not a rotate -o json stream is refused
// naming its line; neither writes a report.
func TestReportBadInputWritesNothing(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "report.html")
	if code, _, stderr := run(t, "report"); code != cli.ExitUsage || !strings.Contains(stderr, "-o FILE.html") {
		t.Errorf("report without -o: exit %d, %q; want a usage error asking for -o", code, stderr)
	}
	events := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(events, []byte(`{"time":"2026-12-02T06:00:00Z","kind":"state"}`+"\nplan: trust\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "report", "-o", out, "--events", events)
	if code != cli.ExitFailure || !strings.Contains(stderr, events+":2") {
		t.Errorf("report with a bad event file: exit %d, %q; want an error naming %s:2", code, stderr, events)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a report was written despite the bad input (%v)", err)
	}
}
