// Package ztunnel holds `meshca ztunnel`: per-pod views of ztunnel, the
// ambient node proxy. Flags and printing only; reading and parsing live in
// internal/proxy, cluster access in internal/kube.
package ztunnel

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/proxy"
	"github.com/meshca/meshca/internal/report"
)

// DefaultNamespace is where ztunnel pods are looked up when -n is not given.
const DefaultNamespace = "istio-system"

// NewCmd returns `meshca ztunnel` with its subcommands.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ztunnel",
		Short: "Inspect ztunnel, the ambient node proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(newCertsCmd(env))
	return cmd
}

type certsOptions struct {
	env      *cli.Env
	pod      string
	node     string
	file     string
	output   string
	selector string
	fetch    kube.FetchFlags

	format report.Format
}

func newCertsCmd(env *cli.Env) *cobra.Command {
	o := &certsOptions{env: env}
	cmd := &cobra.Command{
		Use:     "certs (POD | --node NODE | -f FILE)",
		Aliases: []string{"certificates"},
		Short:   "Show the certificates a ztunnel holds, as istioctl zc certificates does",
		Long: `Show the certificate of every identity a ztunnel holds and the roots it trusts
for it, read from ztunnel's admin API (/config_dump on port 15000, reached by
port-forward) or from a saved dump (-f FILE, - for stdin; the whole
/config_dump or just its "certificates" array).

The table reads like 'istioctl zc certificates': same columns, serials in
lowercase hex, RFC 3339 times, "Unavailable: <reason>" shown as Unavailable,
NA for identities without a certificate. Unlike istioctl, each row is labelled
by what the certificate IS, so a root carried in the chain (from
cert-chain.pem) shows as Root. A legacy dump (ztunnel before 1.26, no
rootCerts) prints exactly what istioctl prints. -o wide adds the SHA-256
fingerprint (first 12 hex digits), the way to tell generations apart: every
tools/certs generation has the same subject names.

ztunnel does not de-duplicate roots: a root-cert.pem of old + new + new gives
three Root rows. meshca compares trust as a set and notes duplicates on stderr.

-o json prints a ZtunnelCertificates document (apiVersion meshca.io/v1alpha1):
  identities[]: identity, state (verbatim), status, legacyFormat,
    certificates[] {field (certChain|rootCerts), index, type, role
      (leaf|intermediate|root), valid, serialNumber, notBefore, notAfter,
      fingerprint (SHA-256 of DER), subject, issuer, sans},
    trust {roots: sorted distinct fingerprints, duplicates},
    signer (fingerprint of the leaf's issuer), anchor (trusted root the leaf
    chains to)
  warnings[]
Fields are only ever added within an apiVersion.`,
		Example: `  # The ztunnel pod in istio-system (or -n NAMESPACE)
  meshca ztunnel certs ztunnel-7x2kq

  # The ztunnel on a node, with fingerprints
  meshca ztunnel certs --node worker-3 -o wide

  # A saved dump
  kubectl -n istio-system exec ztunnel-7x2kq -- curl -s localhost:15000/config_dump > dump.json
  meshca ztunnel certs -f dump.json -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(args); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.file, "file", "f", "", "read a saved /config_dump (or its certificates array) from FILE, - for stdin")
	f.StringVar(&o.node, "node", "", "read the ztunnel pod running on NODE")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table|wide|json|yaml")
	f.StringVar(&o.selector, "selector", "app=ztunnel", "label selector of ztunnel pods, for --node")
	o.fetch.AddFlags(f, "ztunnel")
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
	sources := 0
	for _, s := range []string{o.pod, o.node, o.file} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return cli.Usage("name exactly one of POD, --node NODE or -f FILE")
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
	z, err := proxy.ReadZtunnel(data)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	for _, w := range z.Warnings() {
		_, _ = fmt.Fprintf(o.env.Streams.ErrOut, "Warning: %s\n", w)
	}
	return proxy.PrintZtunnel(o.env.Streams.Out, z, proxy.PrintOptions{Format: o.format, Now: o.env.Now(), Source: source})
}

// read returns the dump and a description of where it came from.
func (o *certsOptions) read(ctx context.Context) ([]byte, string, error) {
	if o.file != "" {
		return proxy.ReadInput(o.file, o.env.Streams.In)
	}
	client, err := kube.NewClient(o.env.Kube)
	if err != nil {
		return nil, "", err
	}
	ns, pod := DefaultNamespace, o.pod
	if client.NamespaceExplicit {
		ns = client.Namespace
	}
	if o.node != "" {
		p, err := kube.PodOnNode(ctx, client.Clientset, o.selector, o.node)
		if err != nil {
			return nil, "", err
		}
		ns, pod = p.Namespace, p.Name
	}
	f := kube.NewFetcher(client)
	o.fetch.Apply(f)
	data, err := f.Get(ctx, ns, pod, "/config_dump")
	if err != nil {
		return nil, "", err
	}
	return data, "pod " + ns + "/" + pod, nil
}
