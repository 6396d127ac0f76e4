// Package check holds `meshca check`: the preflight that says whether an
// Istio install is ready for a zero-downtime CA rotation, and what to change
// when it is not. Flags and printing only; the checks live in
// internal/preflight, cluster access in internal/kube.
package check

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/preflight"
	"github.com/meshca/meshca/internal/report"
)

// cluster is what the command needs from a cluster. Tests provide their own.
type cluster struct {
	clientset kubernetes.Interface
	// namespace is -n when given, else "" (find istiod's namespace).
	namespace string
}

type options struct {
	env          *cli.Env
	warnDays     int
	criticalDays int
	output       string

	format  report.Format
	connect func(o *options) (*cluster, error)
}

// NewCmd returns `meshca check`.
func NewCmd(env *cli.Env) *cobra.Command {
	return newCmd(env, connect)
}

func newCmd(env *cli.Env, connect func(*options) (*cluster, error)) *cobra.Command {
	o := &options{env: env, connect: connect}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the mesh is ready for a zero-downtime CA rotation",
		Long: `Check, before a rotation, everything a zero-downtime CA rotation depends on,
in the style of linkerd check: one line per check, ✓ ok, ‼ warning, × error,
with the exact fix (Helm or IstioOperator value, command) below each finding.

  istiod           found (label app=istiod), running, its version, and
                   ISTIO_MULTIROOT_MESH=true in its env: without it istiod
                   ignores a changed root-cert.pem until restarted (error).
  mesh-config      PROXY_CONFIG_XDS_AGENT="true" in the mesh config's
                   defaultConfig.proxyMetadata, and the waypoints, gateways
                   and sidecars created before it was set: they will be
                   restarted during the rotation (warnings).
  ztunnel          the DaemonSet's version trusts several roots (1.26+,
                   1.25.3+, 1.24.6+; older is an error, an unversioned tag a
                   warning) and whether it reloads istiod's root (1.30+) or
                   must be restarted.
  ca               plug-in cacerts, complete (all of ca-cert.pem, ca-key.pem,
                   cert-chain.pem, root-cert.pem) and valid as istiod
                   validates it at load; the self-signed istio-ca-secret is
                   an error: switching to a plug-in CA needs an istiod
                   restart.
  ca-expiry        every root and intermediate against --warn-days (warning)
                   and --critical-days (error); expired is an error.
  root-configmaps  istio-ca-root-cert in every namespace carries the bytes of
                   root-cert.pem (warning).

-n names the Istio namespace (where istiod and cacerts live); by default it
is the namespace of the istiod Deployment.

-o json prints a Preflight document (apiVersion meshca.io/v1alpha1):
  ready, categories[] {name, checks[] {name, status (ok|warning|error),
  message, hint, details[]}}. hint and details are omitted when empty.
  Category names are istiod, mesh-config, ztunnel, ca, ca-expiry and
  root-configmaps. Fields are only ever added within an apiVersion.

Exit status:
  0  ready: every check ok, or warnings that are not past a threshold
  1  not ready: at least one error (or the check could not run)
  2  usage error
  3  ready, but a root or intermediate expires within --warn-days`,
		Example: `  # Is the mesh ready for meshca rotate?
  meshca check

  # In CI or a cron job: fail (1) when not ready, 3 when the CA expires within 60 days
  meshca check --warn-days 60 --critical-days 14 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.warnDays, "warn-days", preflight.DefaultWarnDays, "warn when a root or intermediate expires within this many days (exit 3); 0 disables")
	f.IntVar(&o.criticalDays, "critical-days", preflight.DefaultCriticalDays, "fail when a root or intermediate expires within this many days (exit 1); 0 disables")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table|json|yaml")
	return cmd
}

func (o *options) complete() error {
	var err error
	if o.format, err = report.ParseFormat(o.output, report.Table, report.JSON, report.YAML); err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	if o.warnDays < 0 || o.criticalDays < 0 {
		return cli.Usage("--warn-days and --critical-days must not be negative")
	}
	if o.warnDays > 0 && o.criticalDays > o.warnDays {
		return cli.Usage("--critical-days %d is more than --warn-days %d", o.criticalDays, o.warnDays)
	}
	return nil
}

// connect reaches the cluster of the global kube flags.
func connect(o *options) (*cluster, error) {
	client, err := kube.NewClient(o.env.Kube)
	if err != nil {
		return nil, err
	}
	c := &cluster{clientset: client.Clientset}
	if client.NamespaceExplicit {
		c.namespace = client.Namespace
	}
	return c, nil
}

func (o *options) run(ctx context.Context) error {
	c, err := o.connect(o)
	if err != nil {
		return err
	}
	rep, err := preflight.Run(ctx, c.clientset, preflight.Options{
		Namespace:    c.namespace,
		WarnDays:     o.warnDays,
		CriticalDays: o.criticalDays,
		Now:          o.env.Now(),
	})
	if err != nil {
		return err
	}
	out := o.env.Streams.Out
	if o.format.Structured() {
		err = report.Encode(out, o.format, rep)
	} else {
		err = rep.Print(out)
	}
	if err != nil {
		return fmt.Errorf("print the report: %w", err)
	}
	switch {
	case !rep.Ready():
		return cli.Silent(cli.ExitFailure)
	case rep.PastThreshold():
		return cli.Silent(cli.ExitWarning)
	}
	return nil
}
