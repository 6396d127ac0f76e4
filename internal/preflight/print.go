package preflight

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// maxDetails bounds the details printed per check in the text report; the
// JSON form carries them all.
const maxDetails = 10

// Print writes the report as text, linkerd-check style: each category
// underlined, one line per check (✓ ok, ‼ warning, × error) with its message,
// the details and the fix of those that are not ok indented below it (-o
// json carries the details of ok checks too), and a
// final status line.
func (r *Report) Print(w io.Writer) error {
	var b strings.Builder
	for i, cat := range r.Categories {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s\n%s\n", cat.Name, strings.Repeat("-", len(cat.Name)))
		for _, c := range cat.Checks {
			line := c.Status.Mark() + " " + c.Name
			if c.Message != "" {
				line += ": " + c.Message
			}
			b.WriteString(line + "\n")
			if c.Status == StatusOK {
				continue
			}
			for j, d := range c.Details {
				if j == maxDetails {
					fmt.Fprintf(&b, "    … and %d more (-o json lists all)\n", len(c.Details)-j)
					break
				}
				b.WriteString("    - " + d + "\n")
			}
			if c.Hint != "" {
				b.WriteString("    fix: " + strings.ReplaceAll(c.Hint, "\n", "\n      ") + "\n")
			}
		}
	}
	if len(r.Categories) > 0 {
		b.WriteString("\n")
	}
	b.WriteString(r.summary() + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// summary is the final status line.
func (r *Report) summary() string {
	var ok int
	for _, cat := range r.Categories {
		for _, c := range cat.Checks {
			if c.Status == StatusOK {
				ok++
			}
		}
	}
	errs, warns := len(r.Errors()), len(r.Warnings())
	counts := fmt.Sprintf("%d ok, %s, %s", ok, plural(warns, "warning"), plural(errs, "error"))
	switch {
	case errs > 0:
		return fmt.Sprintf("× Not ready for a CA rotation (%s): fix the errors above first.", counts)
	case r.PastThreshold():
		return fmt.Sprintf("‼ Ready for a CA rotation (%s), and a CA certificate expires within the warning threshold.", counts)
	}
	return fmt.Sprintf("✓ Ready for a CA rotation (%s).", counts)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// document is the JSON (and YAML) form of a Report.
type document struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Ready      bool       `json:"ready"`
	Categories []Category `json:"categories"`
}

// MarshalJSON writes the Preflight document:
//
//	{"apiVersion": "meshca.io/v1alpha1", "kind": "Preflight", "ready": bool,
//	 "categories": [{"name": string, "checks": [{"name": string,
//	   "status": "ok"|"warning"|"error", "message": string,
//	   "hint": string (omitted when empty),
//	   "details": [string] (omitted when empty)}]}]}
//
// Fields are only ever added within an apiVersion.
func (r *Report) MarshalJSON() ([]byte, error) {
	cats := r.Categories
	if cats == nil {
		cats = []Category{}
	}
	return json.Marshal(document{APIVersion: APIVersion, Kind: Kind, Ready: r.Ready(), Categories: cats})
}

// UnmarshalJSON reads a Preflight document back.
func (r *Report) UnmarshalJSON(data []byte) error {
	var d document
	if err := json.Unmarshal(data, &d); err != nil {
		return err
	}
	if d.Kind != Kind || d.APIVersion != APIVersion {
		return fmt.Errorf("not a %s %s document (apiVersion %q, kind %q)", APIVersion, Kind, d.APIVersion, d.Kind)
	}
	r.Categories = d.Categories
	return nil
}
