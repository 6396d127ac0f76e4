// Package report renders command results: tables (the default, aligned like
// kubectl and istioctl), wide tables, JSON and YAML. Commands build a value
// and a Table from it; this package owns the formatting rules.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Format is an -o value.
type Format string

// Output formats.
const (
	Table Format = "table"
	Wide  Format = "wide"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat validates an -o value against the formats a command supports.
func ParseFormat(s string, allowed ...Format) (Format, error) {
	if s == "" {
		return Table, nil
	}
	if len(allowed) == 0 {
		allowed = []Format{Table, Wide, JSON, YAML}
	}
	names := make([]string, len(allowed))
	for i, f := range allowed {
		if string(f) == s {
			return f, nil
		}
		names[i] = string(f)
	}
	return "", fmt.Errorf("unknown output format %q: use one of %s", s, strings.Join(names, "|"))
}

// Structured reports whether f is a machine-readable format.
func (f Format) Structured() bool { return f == JSON || f == YAML }

// Encode writes v as indented JSON or YAML.
func Encode(w io.Writer, f Format, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", f, err)
	}
	if f == YAML {
		if data, err = yaml.JSONToYAML(data); err != nil {
			return fmt.Errorf("encode yaml: %w", err)
		}
		_, err = w.Write(data)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// TableWriter is a table with a header, written with the tabwriter settings
// of istioctl (minwidth 0, tabwidth 8, padding 5) so that meshca's per-pod
// views line up exactly as users know them.
type TableWriter struct {
	tw *tabwriter.Writer
}

// NewTable starts a table on w with the given column headers.
func NewTable(w io.Writer, headers ...string) *TableWriter {
	t := &TableWriter{tw: tabwriter.NewWriter(w, 0, 8, 5, ' ', 0)}
	t.Row(headers...)
	return t
}

// Row adds one row.
func (t *TableWriter) Row(cells ...string) {
	_, _ = fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// Flush writes the aligned table.
func (t *TableWriter) Flush() error { return t.tw.Flush() }
