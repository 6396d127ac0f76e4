// Package proxy holds `meshca proxy`: per-pod views of envoy proxies
// (sidecars, gateways, waypoints). Flags and printing only; reading and
// parsing live in internal/proxy, cluster access in internal/kube.
package proxy

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	dump "github.com/meshca/meshca/internal/proxy"
	"github.com/meshca/meshca/internal/report"
)

// SecretsPath is envoy's admin path for its SDS secrets only (facts §4).
const SecretsPath = "/config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets"

// NewCmd returns `meshca proxy` with its subcommands.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Inspect envoy proxies: sidecars, gateways, waypoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(newCertsCmd(env))
	return cmd
}

type certsOptions struct {
	env    *cli.Env
	pod    string
	file   string
	output string
	fetch  kube.FetchFlags

	format report.Format
}

func newCertsCmd(env *cli.Env) *cobra.Command {
	o := &certsOptions{env: env}
	cmd := &cobra.Command{
		Use:     "certs (POD | -f FILE)",
		Aliases: []string{"certificates", "secret"},
		Short:   "Show the certificates an envoy proxy holds, as istioctl pc secret does, with every root",
		Long: `Show the SDS secrets of an envoy proxy (sidecar, gateway or waypoint): the
workload certificate ("default") and the trusted roots ("ROOTCA"), active and
warming, read from envoy's admin API (port 15000, by port-forward) or from a
saved dump (-f FILE, - for stdin): envoy's SecretsConfigDump, a whole
/config_dump holding one, or 'istioctl pc secret -o json' output.

The table reads like 'istioctl pc secret': same columns, types (Cert Chain,
CA), statuses (ACTIVE, WARMING), serials and times; but ROOTCA gets one row
per root, where istioctl shows only the first. During a CA rotation that is
the row that matters. -o wide adds the SHA-256 fingerprint (first 12 hex
digits), the way to tell generations apart.

-o json prints a ProxyCertificates document (apiVersion meshca.io/v1alpha1):
  workload {identity, state, trust {roots: sorted distinct fingerprints,
    duplicates}, signer (fingerprint of the leaf's issuer), anchor (trusted
    root the leaf chains to)},
  secrets[] {name, status, versionInfo, lastUpdated, source,
    certificates[] {field (certificate_chain|trusted_ca), index, type, role
      (leaf|intermediate|root), valid, serialNumber, notBefore, notAfter,
      fingerprint, subject, issuer, sans, trustDomain}},
  warnings[]
Fields are only ever added within an apiVersion.`,
		Example: `  # A sidecar, gateway or waypoint pod in the current namespace (or -n NAMESPACE)
  meshca proxy certs productpage-v1-5f9d8 -o wide

  # A saved dump
  istioctl pc secret productpage-v1-5f9d8 -o json > secrets.json
  meshca proxy certs -f secrets.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(args); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", "", "read a saved secrets dump from FILE, - for stdin")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table|wide|json|yaml")
	o.fetch.AddFlags(f, "envoy")
	return cmd
}

func (o *certsOptions) complete(args []string) error {
	var err error
	if o.format, err = report.ParseFormat(o.output, report.Table, report.Wide, report.JSON, report.YAML); err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	if len(args) == 1 {
		o.pod = args[0]
	}
	if (o.pod == "") == (o.file == "") {
		return cli.Usage("name exactly one of POD or -f FILE")
	}
	if err := o.fetch.Validate(); err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	return nil
}

func (o *certsOptions) run(ctx context.Context) error {
	data, source, err := o.read(ctx)
	if err != nil {
		return err
	}
	e, err := dump.ReadEnvoy(data)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	for _, w := range e.Warnings() {
		_, _ = fmt.Fprintf(o.env.Streams.ErrOut, "Warning: %s\n", w)
	}
	return dump.PrintEnvoy(o.env.Streams.Out, e, dump.PrintOptions{Format: o.format, Now: o.env.Now(), Source: source})
}

// read returns the dump and a description of where it came from.
func (o *certsOptions) read(ctx context.Context) ([]byte, string, error) {
	if o.file != "" {
		return dump.ReadInput(o.file, o.env.Streams.In)
	}
	client, err := kube.NewClient(o.env.Kube)
	if err != nil {
		return nil, "", err
	}
	f := kube.NewFetcher(client)
	o.fetch.Apply(f)
	data, err := f.Get(ctx, client.Namespace, o.pod, SecretsPath)
	if err != nil {
		return nil, "", err
	}
	return data, "pod " + client.Namespace + "/" + o.pod, nil
}
