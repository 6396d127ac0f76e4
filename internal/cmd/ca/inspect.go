package ca

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
)

func newInspectCmd(env *cli.Env) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "inspect PATH...",
		Short: "List the certificates and keys in files or directories",
		Long: `List every certificate in the given files, directories (their regular files,
not recursive) or standard input ("-"): its role judged from the certificate
itself (root: self-signed CA; intermediate: other CA; leaf), subject, issuer,
serial as istioctl prints it, SHA-256 fingerprint, validity and key.

Private keys are recognised and reported as "private key (matches cert X)";
their contents are never printed. A certificate whose signature does not
verify (with its own key if self-issued, else with the key of its issuer when
that issuer is among the files given) is flagged BROKEN SIGNATURE.

A file that cannot be read or parsed (a looping symlink, a FIFO, a DSA key)
is listed with its error and the listing goes on; the exit code is then 1.`,
		Example: `  meshca ca inspect ./ca/east
  kubectl get secret cacerts -n istio-system -o jsonpath='{.data.root-cert\.pem}' | base64 -d | meshca ca inspect -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			format, err := report.ParseFormat(output)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			inputs, err := readInputs(env, args)
			if err != nil {
				return err
			}
			items := pki.Inspect(inputs, env.Now())
			if format.Structured() {
				err = report.Encode(env.Streams.Out, format, map[string]any{"items": items})
			} else {
				err = printInspect(env, items, format == report.Wide)
			}
			if err != nil {
				return err
			}
			if slices.ContainsFunc(items, pki.Item.Failed) {
				return cli.Silent(cli.ExitFailure)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, wide, json or yaml")
	return cmd
}

// readInputs reads the named files, the regular files of named directories
// (skipping hidden files and files that hold no PEM) and "-" (stdin). What
// cannot be read (a looping symlink, a FIFO, a permission error) becomes an
// input with its error, so the listing names it and goes on.
func readInputs(env *cli.Env, args []string) ([]pki.Input, error) {
	var inputs []pki.Input
	seen := map[string]bool{}
	add := func(in pki.Input) {
		if !seen[in.Name] {
			seen[in.Name] = true
			inputs = append(inputs, in)
		}
	}
	for _, a := range args {
		if a == "-" {
			data, err := pki.ReadAll("stdin", env.Streams.In)
			if err != nil {
				return nil, err
			}
			add(pki.Input{Name: "stdin", Data: data})
			continue
		}
		st, err := os.Stat(a)
		if err != nil || !st.IsDir() {
			data, rerr := pki.ReadFile(a)
			add(pki.Input{Name: a, Data: data, Err: rerr})
			continue
		}
		entries, err := os.ReadDir(a)
		if err != nil {
			add(pki.Input{Name: a, Err: err})
			continue
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		found := false
		for _, e := range entries {
			if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(a, e.Name())
			data, err := pki.ReadFile(p)
			if err != nil {
				if e.Type()&fs.ModeSymlink != 0 {
					err = fmt.Errorf("symbolic link %s cannot be followed: %w", p, err)
				}
				add(pki.Input{Name: p, Err: err})
				found = true
				continue
			}
			if !strings.Contains(string(data), "-----BEGIN") {
				continue
			}
			add(pki.Input{Name: p, Data: data})
			found = true
		}
		if !found {
			return nil, fmt.Errorf("%s: no PEM files found", a)
		}
	}
	return inputs, nil
}

func printInspect(env *cli.Env, items []pki.Item, wide bool) error {
	headers := []string{"FILE", "#", "ROLE", "SUBJECT", "ISSUER", "SERIAL", "SHA-256", "NOT BEFORE", "NOT AFTER", "DAYS LEFT", "KEY", "CA"}
	if wide {
		headers = append(headers, "SANS")
	}
	t := report.NewTable(env.Streams.Out, headers...)
	const ts = "2006-01-02T15:04:05Z"
	for _, it := range items {
		switch {
		case it.Certificate != nil:
			c := it.Certificate
			fp := c.Fingerprint[:12]
			if wide {
				fp = c.Fingerprint
			}
			ca := "no"
			if c.IsCA {
				ca = "CA"
				if c.MaxPathLen != nil {
					ca += " pathlen:" + strconv.Itoa(*c.MaxPathLen)
				}
			}
			role := string(c.Role)
			if it.SignatureError != "" {
				role += " BROKEN SIGNATURE: " + it.SignatureError
			}
			row := []string{it.File, strconv.Itoa(it.Block), role, c.Subject, c.Issuer, c.Serial, fp,
				c.NotBefore.Format(ts), c.NotAfter.Format(ts), strconv.Itoa(c.DaysLeft), c.KeyType, ca}
			if wide {
				row = append(row, strings.Join(c.SANs, ","))
			}
			t.Row(row...)
		case it.Key != nil:
			desc := "private key (matches no certificate given)"
			if it.Key.Matches != "" {
				desc = fmt.Sprintf("private key (matches cert %s %s)", it.Key.MatchesSubject, it.Key.Matches[:12])
			}
			row := []string{it.File, strconv.Itoa(it.Block), desc, "-", "-", "-", "-", "-", "-", "-", it.Key.KeyType, "-"}
			if wide {
				row = append(row, "-")
			}
			t.Row(row...)
		default:
			row := []string{it.File, blockColumn(it.Block), it.Error, "-", "-", "-", "-", "-", "-", "-", "-", "-"}
			if wide {
				row = append(row, "-")
			}
			t.Row(row...)
		}
	}
	return t.Flush()
}

// blockColumn is the "#" column: "-" for an error about a whole file.
func blockColumn(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}
