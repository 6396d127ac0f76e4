package verify

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/meshca/meshca/internal/report"
	fleet "github.com/meshca/meshca/internal/verify"
)

// print writes the report in the chosen format.
func (o *options) print(rep *fleet.Report) error {
	w := o.env.Streams.Out
	if o.format.Structured() {
		return report.Encode(w, o.format, rep)
	}
	wide := o.format == report.Wide
	printExpectation(w, &rep.Expectation)
	if err := printSummary(w, rep); err != nil {
		return err
	}
	if err := printConfigMaps(w, rep.RootConfigMaps); err != nil {
		return err
	}
	if err := printProxies(w, rep, wide); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s\n", verdict(rep, wide))
	return err
}

func printExpectation(w io.Writer, exp *fleet.Expectation) {
	signer := "any signer"
	if exp.Signer != "" {
		signer = "signer " + shortList([]string{exp.Signer})
	}
	extra := ""
	if exp.AllowExtraRoots {
		extra = ", extra roots allowed"
	}
	_, _ = fmt.Fprintf(w, "Expected: roots %s, %s%s (from %s)\n\n", strings.ReplaceAll(shortList(exp.Roots), ",", ", "), signer, extra, exp.Source)
}

func printSummary(w io.Writer, rep *fleet.Report) error {
	t := report.NewTable(w, "KIND", "TOTAL", "MATCH", "STALE", "NOT REFRESHING", "EXPIRING", "NOTHING TO VERIFY", "UNREADABLE", "NOT READY")
	row := func(kind string, c fleet.Counts) {
		t.Row(kind, strconv.Itoa(c.Total), strconv.Itoa(c.Match), strconv.Itoa(c.Stale), strconv.Itoa(c.NotRefreshing), strconv.Itoa(c.Expiring),
			strconv.Itoa(c.NothingToVerify), strconv.Itoa(c.Unreadable), strconv.Itoa(c.NotReady))
	}
	for _, k := range rep.Kinds {
		row(string(k.Kind), k.Counts)
	}
	row("TOTAL", rep.Total)
	return t.Flush()
}

func printConfigMaps(w io.Writer, s *fleet.ConfigMapSummary) error {
	if s == nil {
		_, err := fmt.Fprintf(w, "\nistio-ca-root-cert ConfigMaps: not checked\n")
		return err
	}
	if _, err := fmt.Fprintf(w, "\nistio-ca-root-cert ConfigMaps: %d of %d match\n", s.Match, s.Total); err != nil {
		return err
	}
	if len(s.Stale) == 0 {
		return nil
	}
	t := report.NewTable(w, "NAMESPACE", "ROOTS", "PROBLEM")
	for _, cm := range s.Stale {
		for i, p := range cm.Problems {
			if i == 0 {
				t.Row(cm.Namespace, shortList(cm.Roots), p)
			} else {
				t.Row("", "", p)
			}
		}
	}
	return t.Flush()
}

// printProxies lists the failing proxies, or every proxy when wide.
func printProxies(w io.Writer, rep *fleet.Report, wide bool) error {
	list := rep.Failing()
	title := fmt.Sprintf("Proxies that do not match: %d", len(list))
	if wide {
		list = rep.Proxies
		title = fmt.Sprintf("Proxies: %d", len(list))
	}
	if _, err := fmt.Fprintf(w, "\n%s\n", title); err != nil {
		return err
	}
	if len(list) == 0 {
		return nil
	}
	headers := []string{"KIND", "NAMESPACE", "NAME", "NODE", "STATUS", "PROBLEM"}
	if wide {
		headers = []string{"KIND", "NAMESPACE", "NAME", "NODE", "OWNER", "STATUS", "IDENTITIES", "ROOTS", "SIGNERS", "PROBLEM"}
	}
	t := report.NewTable(w, headers...)
	for i := range list {
		r := &list[i]
		lines := make([]string, 0, len(r.Problems)+len(r.Notes))
		lines = append(lines, r.Problems...)
		for _, n := range r.Notes {
			lines = append(lines, "note: "+n)
		}
		if len(lines) == 0 {
			lines = []string{"-"}
		}
		node := r.Node
		if node == "" {
			node = "-"
		}
		first := []string{string(r.Kind), r.Namespace, r.Name, node, string(r.Status)}
		if wide {
			owner := "-"
			if r.Owner != nil {
				owner = r.Owner.String()
			}
			first = []string{string(r.Kind), r.Namespace, r.Name, node, owner, string(r.Status), strconv.Itoa(r.Identities), shortList(r.Roots), shortList(r.Signers)}
		}
		blank := make([]string, len(first))
		for j, line := range lines {
			if j == 0 {
				t.Row(append(first, line)...)
			} else {
				t.Row(append(blank, line)...)
			}
		}
	}
	return t.Flush()
}

// verdict is the closing line.
func verdict(rep *fleet.Report, wide bool) string {
	c := rep.Total
	var parts []string
	if n := c.Failing(); n > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d proxies do not match (%s)", n, c.Total, c.FailingByStatus()))
	}
	if s := rep.RootConfigMaps; s != nil && len(s.Stale) > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d istio-ca-root-cert ConfigMaps are stale", len(s.Stale), s.Total))
	}
	nothing := ""
	if c.NothingToVerify > 0 {
		verb := "hold"
		if c.NothingToVerify == 1 {
			verb = "holds"
		}
		nothing = fmt.Sprintf("; %d %s nothing to verify (not counted as matching", c.NothingToVerify, verb)
		if !wide {
			nothing += "; -o wide lists them"
		}
		nothing += ")"
	}
	if rep.OK() {
		return fmt.Sprintf("OK: %d of %d proxies match%s", c.Match, c.Total, nothing)
	}
	return "FAIL: " + strings.Join(parts, "; ") + nothing
}
