// Package rotate implements `meshca rotate`, `meshca status` and
// `meshca rollback` on top of the rotation engine (internal/rotate).
package rotate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/rotate"
)

// clusterFlags selects the clusters: --context may be repeated.
type clusterFlags struct {
	contexts []string
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.contexts, "context", nil, "kubeconfig context of a cluster; repeat for a multi-cluster mesh sharing one root")
}

// clusters connects to each selected cluster.
func (f *clusterFlags) clusters(env *cli.Env, dirs map[string]*bundle.Bundle) ([]*rotate.Cluster, error) {
	contexts := f.contexts
	if len(contexts) == 0 {
		contexts = []string{""}
	}
	var out []*rotate.Cluster
	for _, ctxName := range contexts {
		flags := forContext(env.Kube, ctxName)
		client, err := kube.NewClient(flags)
		if err != nil {
			return nil, err
		}
		name := ctxName
		if name == "" {
			if raw, err := flags.ToRawKubeConfigLoader().RawConfig(); err == nil {
				name = raw.CurrentContext
			}
		}
		ns := mesh.DefaultNamespace
		if client.NamespaceExplicit {
			ns = client.Namespace
		}
		c := rotate.NewCluster(name, client, ns)
		if dirs != nil {
			c.CA = dirs[ctxName]
			if c.CA == nil {
				c.CA = dirs[""]
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// forContext copies the global kube flags with another context.
func forContext(base *genericclioptions.ConfigFlags, context string) *genericclioptions.ConfigFlags {
	f := genericclioptions.NewConfigFlags(true)
	f.KubeConfig, f.Namespace = base.KubeConfig, base.Namespace
	if context != "" {
		f.Context = &context
	} else {
		f.Context = base.Context
	}
	return f
}

type rotateOptions struct {
	clusterFlags
	root, caDir, until, strategy, keyType string
	acceptDowntime, plan, yes, force      bool
	intermediateDays                      int
	reloadTimeout, rolloutTimeout         time.Duration
	verifyTimeout                         time.Duration
	sandboxDir                            string
}

// NewCmd returns `meshca rotate`.
func NewCmd(env *cli.Env) *cobra.Command {
	o := &rotateOptions{}
	cmd := &cobra.Command{
		Use:   "rotate (--root DIR | --ca-dir DIR)",
		Short: "Rotate the mesh CA in three proven phases: trust, issue, retire",
		Long: `Rotate the CA of a live Istio mesh without failed handshakes
(istio-ca-facts.md §5):

  trust   keep the old signer; root-cert.pem = old bytes + new root. istiod
          hot-reloads it, envoys get it by PCDS, ztunnel is restarted. Proven
          when every proxy trusts both roots.
  issue   the new intermediate signs; root-cert.pem grows again so PCDS makes
          envoys re-sign. ztunnel is restarted. Proven when every leaf comes
          from the new intermediate.
  retire  only when no proxy holds a certificate from the old CA:
          root-cert.pem = the new root. Proven when every proxy trusts only it.

Before the first write the current cacerts is copied to a backup Secret and
read back byte for byte. Every write of cacerts carries its resourceVersion:
a concurrent edit stops the run and nothing is overwritten. Interrupt it at any
point and run it again: it continues from what the cluster holds, and never
redoes a proven phase. With several --context flags the clusters share the
new root, each gets its own intermediate, and each phase completes in every
cluster before the next starts in any.

Exit codes: 0 the requested phase is proven on every proxy of every cluster;
1 error, refusal or a fleet that did not converge (the lagging proxies are
named); 2 usage error.`,
		Example: `  meshca ca root --out ./new-root
  meshca rotate --kubeconfig ~/.kube/config --root ./new-root --plan
  meshca rotate --kubeconfig ~/.kube/config --root ./new-root --yes
  meshca rotate --context east --context west --root ./new-root --until trust --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), env) },
	}
	o.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "", "directory of the new root (root-cert.pem, root-key.pem); meshca issues each cluster's intermediate under it")
	f.StringVar(&o.caDir, "ca-dir", "", "bring your own: a bundle directory (ca-cert, ca-key, cert-chain, root-cert) signed by your PKI; with several clusters, DIR/<context>/ per cluster")
	f.StringVar(&o.until, "until", "retire", "last phase to run: trust, issue or retire")
	f.StringVar(&o.strategy, "strategy", "phased", "phased, or one-step (the field note's procedure: causes failed handshakes; needs --i-accept-downtime)")
	f.BoolVar(&o.acceptDowntime, "i-accept-downtime", false, "allow --strategy one-step")
	f.BoolVar(&o.plan, "plan", false, "print every step and each cacerts change without touching anything")
	f.BoolVar(&o.plan, "dry-run", false, "same as --plan")
	f.BoolVar(&o.yes, "yes", false, "do not ask for confirmation")
	f.BoolVar(&o.force, "force", false, "retire the old root even while proxies still hold certificates from the old CA (their mTLS breaks)")
	f.StringVar(&o.keyType, "key-type", string(pki.RSA4096), "key type of the intermediates meshca issues")
	f.IntVar(&o.intermediateDays, "intermediate-days", pki.DefaultIntermediateDays, "validity of the intermediates meshca issues (clamped to the root's)")
	f.DurationVar(&o.reloadTimeout, "reload-timeout", 3*time.Minute, "how long to wait for istiod to hot-reload cacerts before restarting it")
	f.DurationVar(&o.rolloutTimeout, "rollout-timeout", 10*time.Minute, "timeout of each rollout")
	f.DurationVar(&o.verifyTimeout, "verify-timeout", 5*time.Minute, "how long the fleet may take to converge after the restarts")
	f.StringVar(&o.sandboxDir, "sandbox", "", "a meshca sandbox directory: report its probe's handshakes and failures during the rotation")
	return cmd
}

func (o *rotateOptions) run(ctx context.Context, env *cli.Env) error {
	if (o.root == "") == (o.caDir == "") {
		return cli.Usage("give exactly one of --root DIR or --ca-dir DIR")
	}
	until, err := bundle.ParsePhase(o.until)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	kt, err := pki.ParseKeyType(o.keyType)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	switch o.strategy {
	case "phased":
	case "one-step":
		if !o.acceptDowntime {
			return cli.Usage("--strategy one-step causes failed mTLS handshakes while proxies restart (peers that do not trust the new root yet reject the new certificates); pass --i-accept-downtime to run it anyway")
		}
		_, _ = fmt.Fprintln(env.Streams.ErrOut, "WARNING: --strategy one-step: the new signer and roots are written at once; expect failed handshakes until every proxy has restarted")
	default:
		return cli.Usage("--strategy %q: use phased or one-step", o.strategy)
	}
	opts := rotate.Options{
		Until: until, OneStep: o.strategy == "one-step", Force: o.force, KeyType: kt, IntermediateDays: o.intermediateDays,
		ReloadTimeout: o.reloadTimeout, RolloutTimeout: o.rolloutTimeout, VerifyTimeout: o.verifyTimeout,
		Progress: env.Streams.ErrOut, Now: env.Now,
	}
	var dirs map[string]*bundle.Bundle
	if o.root != "" {
		if opts.Root, err = bundle.LoadRoot(o.root, env.Now()); err != nil {
			return err
		}
	} else if dirs, err = loadCADirs(o.caDir, o.contexts); err != nil {
		return err
	}
	clusters, err := o.clusters(env, dirs)
	if err != nil {
		return err
	}
	eng := rotate.New(clusters, opts)
	if o.plan {
		return eng.Plan(ctx, env.Streams.Out)
	}
	if !o.yes {
		if err := eng.Plan(ctx, env.Streams.ErrOut); err != nil {
			return err
		}
		if !confirm(env.Streams.In, env.Streams.ErrOut, "Proceed with the rotation?") {
			return cli.Exit(cli.ExitFailure, errors.New("aborted: nothing was changed"))
		}
	}
	var before *sandboxProbe
	if o.sandboxDir != "" {
		before = readProbe(ctx, o.sandboxDir)
	}
	runErr := eng.Run(ctx)
	printSummary(env.Streams.Out, eng.Summary())
	if o.sandboxDir != "" {
		if after := readProbe(ctx, o.sandboxDir); after != nil && before != nil {
			_, _ = fmt.Fprintf(env.Streams.Out, "\nsandbox probe during the rotation: %d mTLS handshakes, %d failed\n", after.Handshakes-before.Handshakes, after.Failures-before.Failures)
		}
	}
	return runErr
}

// loadCADirs reads --ca-dir: one bundle, or one per context in DIR/<context>.
func loadCADirs(dir string, contexts []string) (map[string]*bundle.Bundle, error) {
	out := map[string]*bundle.Bundle{}
	if len(contexts) > 1 {
		for _, c := range contexts {
			b, err := bundle.Load(filepath.Join(dir, c))
			if err != nil {
				return nil, fmt.Errorf("--ca-dir with several clusters needs %s/<context>: %w", dir, err)
			}
			out[c] = b
		}
		return out, nil
	}
	b, err := bundle.Load(dir)
	if err != nil {
		return nil, err
	}
	out[""] = b
	return out, nil
}

func confirm(in io.Reader, out io.Writer, question string) bool {
	if in == nil {
		return false
	}
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice == 0 {
			_, _ = fmt.Fprintln(out, "not a terminal: pass --yes to proceed")
			return false
		}
	}
	_, _ = fmt.Fprintf(out, "%s [y/N] ", question)
	line, _ := bufio.NewReader(in).ReadString('\n')
	return strings.EqualFold(strings.TrimSpace(line), "y") || strings.EqualFold(strings.TrimSpace(line), "yes")
}

func printSummary(w io.Writer, s rotate.Summary) {
	if len(s.Steps) == 0 {
		return
	}
	_, _ = fmt.Fprintln(w)
	t := report.NewTable(w, "CLUSTER", "STEP", "DURATION", "WAITING (ROLLOUTS, ISTIOD)", "MESHCA'S OWN WORK")
	var total, waiting time.Duration
	for _, st := range s.Steps {
		t.Row(st.Cluster, st.Action, st.Duration.Round(100*time.Millisecond).String(), st.Waiting.Round(100*time.Millisecond).String(), (st.Duration - st.Waiting).Round(100*time.Millisecond).String())
		total += st.Duration
		waiting += st.Waiting
	}
	t.Row("", "total", total.Round(100*time.Millisecond).String(), waiting.Round(100*time.Millisecond).String(), (total - waiting).Round(100*time.Millisecond).String())
	_ = t.Flush()
}
