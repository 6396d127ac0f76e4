package ca

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
)

type rootOptions struct {
	out, keyType, cn, org string
	days                  int
	force                 bool
}

func newRootCmd(env *cli.Env) *cobra.Command {
	o := &rootOptions{}
	cmd := &cobra.Command{
		Use:   "root --out DIR",
		Short: "Generate a new root CA (root-cert.pem, root-key.pem)",
		Long: `Generate a self-signed root CA with the tools/certs Makefile profile (RSA 4096,
SHA-256, O=Istio, critical CA:TRUE, keyUsage digitalSignature, nonRepudiation,
keyEncipherment, keyCertSign, SKI), except that the default common name carries
the date and a key id so each generation can be told apart.

The key is written with mode 0600 and never printed. Keep it off the cluster:
meshca only ever puts intermediates into cacerts.`,
		Example: `  meshca ca root --out ./ca/root-2026
  meshca ca root --out ./ca/root --key-type ecdsa-p256 --days 3650`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			kt, err := pki.ParseKeyType(o.keyType)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			if o.out == "" {
				return cli.Usage("--out is required")
			}
			if o.days < 1 {
				return cli.Usage("--days %d: the validity must be at least 1 day", o.days)
			}
			root, err := pki.NewRoot(pki.RootOptions{KeyType: kt, CommonName: o.cn, Organization: o.org, Days: o.days, Now: env.Now()})
			if err != nil {
				return err
			}
			if err := bundle.WriteRoot(o.out, root, o.force); err != nil {
				return err
			}
			info := pki.Describe(root.Cert, env.Now())
			_, err = fmt.Fprintf(env.Streams.Out, "root CA %q\n  certificate  %s\n  private key  %s (0600)\n  sha256       %s\n  not after    %s\n",
				root.Cert.Subject.CommonName, filepath.Join(o.out, bundle.RootCertFile), filepath.Join(o.out, bundle.RootKeyFile),
				info.Fingerprint, info.NotAfter.Format("2006-01-02T15:04:05Z"))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.out, "out", "", "directory to write root-cert.pem and root-key.pem into (created if missing)")
	f.StringVar(&o.keyType, "key-type", string(pki.RSA4096), "key type: rsa-4096, rsa-2048, ecdsa-p256 or ecdsa-p384")
	f.StringVar(&o.cn, "cn", "", `common name (default "Root CA <date> <key id>")`)
	f.StringVar(&o.org, "org", pki.DefaultOrg, "organization (O=)")
	f.IntVar(&o.days, "days", pki.DefaultRootDays, "validity in days")
	f.BoolVar(&o.force, "force", false, "overwrite an existing root-key.pem")
	return cmd
}
