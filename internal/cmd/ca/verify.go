package ca

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
)

// verifyResult is the JSON/YAML schema of `meshca ca verify`.
type verifyResult struct {
	Dir      string           `json:"dir"`
	Valid    bool             `json:"valid"`
	Signer   *pki.Info        `json:"signer,omitempty"`
	Roots    []string         `json:"roots,omitempty"`
	Findings []bundle.Finding `json:"findings"`
	// Unreadable is set when the bundle could not be read at all (missing
	// file, permission, not a regular file): nothing was judged.
	Unreadable bool `json:"unreadable,omitempty"`
}

func newVerifyCmd(env *cli.Env) *cobra.Command {
	var (
		warnDays int
		output   string
		current  bool
	)
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "Check a cacerts bundle directory the way istiod does at load",
		Long: `Check a bundle directory as istiod checks a plug-in CA when it loads it: all
four files present and parsable; ca-cert.pem chains to a root of root-cert.pem
through cert-chain.pem; ca-key.pem parses and matches ca-cert.pem; the signing
certificate is a CA; every certificate is within its validity window.

Beyond istiod's own check, what the mesh would choke on is refused, each with
its fix: a path length that leaves no room for the leaves (a root with
pathlen:0 above the intermediate), keys the data plane cannot verify (DSA, RSA
below 2048 bits, ECDSA curves other than P-256 and P-384), an intermediate that
outlives its root or expires within one workload certificate lifetime (24h).
With --current (the bundle in use now, which a rotation will replace) weak keys
and lifetimes are warnings.

Warnings (exit 0): expiry within --warn-days, duplicate roots, non-root
certificates in root-cert.pem, a root in cert-chain.pem, a chain that does not
start with ca-cert.pem.

Exit codes:
  0  istiod would load the bundle (warnings allowed)
  1  istiod would refuse the bundle, or it could not be read
  2  usage error`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			format, err := report.ParseFormat(output, report.Table, report.JSON, report.YAML)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			now := env.Now()
			res := verifyResult{Dir: args[0], Findings: []bundle.Finding{}}
			b, err := bundle.Load(args[0])
			if err != nil {
				res.Findings = append(res.Findings, bundle.Finding{Severity: bundle.SeverityError, File: args[0], Message: err.Error()})
				res.Unreadable = true
			} else {
				rep := bundle.Check(b, bundle.CheckOptions{Now: now, WarnWithin: time.Duration(warnDays) * 24 * time.Hour, NewCA: !current})
				res.Findings = append(res.Findings, rep.Findings...)
				res.Valid = rep.Err() == nil
				if rep.Parsed != nil {
					info := pki.Describe(rep.Parsed.Signer, now)
					res.Signer = &info
					res.Roots = pki.Fingerprints(rep.Parsed.Roots)
				}
			}
			if format.Structured() {
				if err := report.Encode(env.Streams.Out, format, res); err != nil {
					return err
				}
			} else {
				printVerify(env, res)
			}
			if !res.Valid {
				return cli.Silent(cli.ExitFailure)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&warnDays, "warn-days", 90, "warn about certificates expiring within this many days")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	cmd.Flags().BoolVar(&current, "current", false, "judge the bundle in use now: weak keys and lifetimes are warnings (rotating away is the fix)")
	return cmd
}

func printVerify(env *cli.Env, res verifyResult) {
	w := env.Streams.Out
	for _, f := range res.Findings {
		mark := "‼"
		if f.Severity == bundle.SeverityError {
			mark = "×"
		}
		_, _ = fmt.Fprintf(w, "%s %s: %s\n", mark, f.File, f.Message)
		if f.Fix != "" {
			_, _ = fmt.Fprintf(w, "    fix: %s\n", f.Fix)
		}
	}
	switch {
	case res.Unreadable:
		_, _ = fmt.Fprintf(w, "× %s: could not be read, so it was not checked\n", res.Dir)
		return
	case !res.Valid:
		_, _ = fmt.Fprintf(w, "× %s: refused: istiod would not load it, or the mesh could not use what it issues\n", res.Dir)
		return
	}
	_, _ = fmt.Fprintf(w, "✓ %s: istiod would load this bundle (signer %q %s, %d root block(s))\n",
		res.Dir, res.Signer.Subject, res.Signer.Fingerprint[:12], len(res.Roots))
}
