package ca

import (
	"fmt"
	"os"
	"path/filepath"
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
their contents are never printed.`,
		Example: `  meshca ca inspect ./ca/east
  kubectl get secret cacerts -n istio-system -o jsonpath='{.data.root-cert\.pem}' | base64 -d | meshca ca inspect -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			format, err := report.ParseFormat(output)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			files, order, err := readInputs(env, args)
			if err != nil {
				return err
			}
			items, err := pki.Inspect(files, order, env.Now())
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, map[string]any{"items": items})
			}
			return printInspect(env, items, format == report.Wide)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, wide, json or yaml")
	return cmd
}

// readInputs reads the named files, the regular files of named directories
// (skipping files that hold no PEM) and "-" (stdin).
func readInputs(env *cli.Env, args []string) (map[string][]byte, []string, error) {
	files := map[string][]byte{}
	var order []string
	add := func(name string, data []byte) {
		if _, ok := files[name]; !ok {
			order = append(order, name)
		}
		files[name] = data
	}
	for _, a := range args {
		if a == "-" {
			data, err := pki.ReadAll("stdin", env.Streams.In)
			if err != nil {
				return nil, nil, err
			}
			add("stdin", data)
			continue
		}
		st, err := os.Stat(a)
		if err != nil {
			return nil, nil, err
		}
		if !st.IsDir() {
			data, err := pki.ReadFile(a)
			if err != nil {
				return nil, nil, err
			}
			add(a, data)
			continue
		}
		entries, err := os.ReadDir(a)
		if err != nil {
			return nil, nil, err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		found := false
		for _, e := range entries {
			if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			p := filepath.Join(a, e.Name())
			data, err := pki.ReadFile(p)
			if err != nil {
				return nil, nil, err
			}
			if !strings.Contains(string(data), "-----BEGIN") {
				continue
			}
			add(p, data)
			found = true
		}
		if !found {
			return nil, nil, fmt.Errorf("%s: no PEM files found", a)
		}
	}
	return files, order, nil
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
			row := []string{it.File, strconv.Itoa(it.Block), string(c.Role), c.Subject, c.Issuer, c.Serial, fp,
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
			row := []string{it.File, strconv.Itoa(it.Block), it.Error, "-", "-", "-", "-", "-", "-", "-", "-", "-"}
			if wide {
				row = append(row, "-")
			}
			t.Row(row...)
		}
	}
	return t.Flush()
}
