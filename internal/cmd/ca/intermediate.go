package ca

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
)

type intermediateOptions struct {
	root, cluster, out, keyType, cn, org, istioNS, trustDomain string
	days                                                       int
	force                                                      bool
}

func newIntermediateCmd(env *cli.Env) *cobra.Command {
	o := &intermediateOptions{}
	cmd := &cobra.Command{
		Use:   "intermediate --root DIR --cluster NAME --out DIR",
		Short: "Generate a cluster's signing CA under a root, in the Makefile layout",
		Long: `Generate the intermediate (signing) CA of one cluster, signed by the root in
--root, and write the tools/certs Makefile layout:

  OUT/NAME/ca-cert.pem     the intermediate
  OUT/NAME/ca-key.pem      its key (0600)
  OUT/NAME/cert-chain.pem  intermediate + root
  OUT/NAME/root-cert.pem   the root

The intermediate has critical CA:TRUE with pathlen 0, SAN
DNS:istiod.<istio-namespace>.svc and L=<cluster>; its validity is clamped so it
never outlives the root. The bundle is verified as istiod would before it is
written.`,
		Example: `  meshca ca intermediate --root ./ca/root-2026 --cluster east --out ./ca`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			kt, err := pki.ParseKeyType(o.keyType)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			if o.root == "" || o.cluster == "" || o.out == "" {
				return cli.Usage("--root, --cluster and --out are required")
			}
			if o.days < 1 {
				return cli.Usage("--days %d: the validity must be at least 1 day", o.days)
			}
			if filepath.Base(o.cluster) != o.cluster || o.cluster == "." || o.cluster == ".." {
				return cli.Usage("--cluster %q must be a plain name (it becomes a directory)", o.cluster)
			}
			now := env.Now()
			root, err := bundle.LoadRoot(o.root, now)
			if err != nil {
				return err
			}
			inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{
				Cluster: o.cluster, KeyType: kt, CommonName: o.cn, Organization: o.org, Days: o.days,
				IstioNamespace: o.istioNS, TrustDomain: o.trustDomain, Now: now,
			})
			if err != nil {
				return err
			}
			b, err := bundle.FromCA(root, inter)
			if err != nil {
				return err
			}
			dir := filepath.Join(o.out, o.cluster)
			b.Source = dir
			if err := bundle.ValidateNew(b, now); err != nil {
				return fmt.Errorf("generated bundle failed verification (not written): %w", err)
			}
			if err := b.Write(dir, o.force); err != nil {
				return err
			}
			info := pki.Describe(inter.Cert, now)
			_, err = fmt.Fprintf(env.Streams.Out, "intermediate CA %q for cluster %s\n  bundle       %s\n  sha256       %s\n  not after    %s\n  issuer       %s (%s)\n",
				inter.Cert.Subject.CommonName, o.cluster, dir, info.Fingerprint, info.NotAfter.Format("2006-01-02T15:04:05Z"),
				root.Cert.Subject.CommonName, pki.ShortFingerprint(root.Cert))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "", "root CA directory (root-cert.pem, root-key.pem)")
	f.StringVar(&o.cluster, "cluster", "", "cluster name: output subdirectory and L= of the subject")
	f.StringVar(&o.out, "out", "", "output directory; the bundle goes to OUT/CLUSTER")
	f.StringVar(&o.keyType, "key-type", string(pki.RSA4096), "key type: rsa-4096, rsa-2048, ecdsa-p256 or ecdsa-p384")
	f.StringVar(&o.cn, "cn", "", `common name (default "Intermediate CA <cluster> <date> <key id>")`)
	f.StringVar(&o.org, "org", pki.DefaultOrg, "organization (O=)")
	f.IntVar(&o.days, "days", pki.DefaultIntermediateDays, "validity in days (clamped to the root's)")
	f.StringVar(&o.istioNS, "istio-namespace", pki.DefaultIstioNamespace, "namespace of istiod, for the DNS SAN istiod.<ns>.svc")
	f.StringVar(&o.trustDomain, "trust-domain", "", "add the URI SAN spiffe://<trust-domain>/ns/<istio-namespace>/sa/istiod")
	f.BoolVar(&o.force, "force", false, "overwrite an existing ca-key.pem")
	return cmd
}
