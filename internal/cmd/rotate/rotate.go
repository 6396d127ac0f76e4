// Package rotate implements `meshca rotate`, `meshca status` and
// `meshca rollback` on top of the rotation engine (internal/rotate).
package rotate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/report/htmlreport"
	"github.com/meshca/meshca/internal/rotate"
)

// multiContext marks cmd as taking the global --context once per cluster.
func multiContext(cmd *cobra.Command) {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[cli.AnnotationMultiContext] = "true"
}

// clusters connects to each cluster named by the global --context flags (the
// current context when there is none), every one with all the other
// kubeconfig overrides of the command line (--as, --token, --user, ...).
func clusters(env *cli.Env, dirs map[string]*bundle.Bundle) ([]*rotate.Cluster, error) {
	contexts := env.Contexts
	if len(contexts) == 0 {
		contexts = []string{""}
	}
	var out []*rotate.Cluster
	for _, ctxName := range contexts {
		flags := kube.WithContext(env.Kube, ctxName)
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

type rotateOptions struct {
	root, caDir, until, strategy, keyType, pace, output string
	acceptDowntime, plan, yes, force, breakLock         bool
	intermediateDays                                    int
	reloadTimeout, rolloutTimeout                       time.Duration
	verifyTimeout                                       time.Duration
	sandboxDir                                          string
	report                                              string
}

// NewCmd returns `meshca rotate`.
func NewCmd(env *cli.Env) *cobra.Command {
	o := &rotateOptions{}
	cmd := &cobra.Command{
		Use:   "rotate (--root DIR | --ca-dir DIR)",
		Short: "Rotate the mesh CA in three proven phases: trust, issue, retire",
		Long: `Rotate the CA of a live Istio mesh without failed handshakes. Switching
the signer and the roots in one step leaves a window in which proxies that do
not trust the new root yet reject the new certificates, so meshca rotates in
three phases, each proven on every proxy before the next:

  trust   keep the old signer; root-cert.pem = old bytes + new root. istiod
          hot-reloads it, envoys with PROXY_CONFIG_XDS_AGENT get it at once
          (PCDS), ztunnel at restart or refresh. Proven when every proxy
          trusts both roots.
  issue   the new intermediate signs; root-cert.pem grows again so that
          envoys re-sign at once. Proven when every leaf comes from the new
          intermediate.
  retire  only when no proxy holds a certificate from the old CA and the
          webhooks' caBundle holds the new root: root-cert.pem = the new root.
          Proven when every proxy trusts only it.

An intermediate-only rotation (the new intermediate chains to the root cacerts
already trusts, e.g. a periodic renewal) has nothing to do in trust and
retire: only the issue phase runs, and is proven.

A completed rotation is history: a run starts a new rotation whenever the
root or the intermediate asked for differs from what cacerts holds, and does
nothing (saying so) when they are the same.

--pace chooses the price of the rotation. Every ztunnel restart ends the
long-lived connections through its node (gRPC streams, pools, websockets):
  fast    (default) in each phase, restart the proxies that lag and cannot
          catch up by themselves: never a ztunnel that already converged,
          an envoy with live PCDS only if it still lags 30s into the phase
          (istio-agent can keep a retired root until its next renewal).
  gentle  restart only what correctness requires: ztunnel before 1.28.6,
          1.29.2 and 1.30.0 (no CA_CERT_WATCHER) once after the trust phase;
          wait for the half-life refresh (SECRET_TTL/2) for the rest.
          --verify-timeout then defaults to the certificate lifetime, and an
          interrupted run resumes the wait.
--plan shows the restarts of the chosen pace.

With --root DIR, meshca issues each cluster's intermediate under that root and
keeps it in DIR/<cluster>/ (the tools/certs layout; key file 0600) the first
time it is needed — by --plan or by the run — so the run writes exactly the
intermediate the plan shows. An intermediate already in DIR/<cluster>/ that
chains to the root is used as is: to renew the intermediate, put a new one
there (meshca ca intermediate --root DIR --out DIR/<cluster>) and run again.

--plan reads every cluster, runs the preflight (meshca check) and prints what
the run would do and what would block it, in every state, without changing
any cluster.

Before the first write the current cacerts is copied to a backup Secret and
read back byte for byte. Every write of cacerts carries its resourceVersion:
a concurrent edit stops the run and nothing is overwritten. Interrupt it at any
point and run it again: it continues from what the cluster holds, and never
redoes a proven phase. With several --context flags the clusters share the
new root, each gets its own intermediate, and each phase completes in every
cluster before the next starts in any.

Progress goes to stderr. -o json streams the run's events on stdout, one JSON
object per line: {"time","elapsed","kind","cluster","phase","workload",
"object","converged","total","expected","duration","waiting","newRoot",
"newSigner","reason","detail"} (kinds: state, preflight-passed, backup,
recorded, nothing-to-do, phase-written, istiod-waiting, istiod-reloaded,
verifying, lagging, restart-started, restart-finished, converging,
phase-proven, stopped, refused, rolled-back, note; see the README).

Exit codes: 0 the requested phase is proven on every proxy of every cluster
(or there was nothing to do); 1 error, refusal, a plan with blockers, or a
fleet that did not converge (the lagging proxies are named); 2 usage error.`,
		Example: `  meshca ca root --out ./new-root
  meshca rotate --kubeconfig ~/.kube/config --root ./new-root --plan
  meshca rotate --kubeconfig ~/.kube/config --root ./new-root --yes
  meshca rotate --root ./new-root --pace gentle --yes
  meshca rotate --context east --context west --root ./new-root --until trust --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), env) },
	}
	multiContext(cmd)
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "", "directory of the new root (root-cert.pem, root-key.pem); meshca issues each cluster's intermediate under it and keeps it in DIR/<cluster>/")
	f.StringVar(&o.caDir, "ca-dir", "", "bring your own: a bundle directory (ca-cert, ca-key, cert-chain, root-cert) signed by your PKI; with several clusters, DIR/<context>/ per cluster")
	f.StringVar(&o.until, "until", "retire", "last phase to run: trust, issue or retire")
	f.StringVar(&o.pace, "pace", string(rotate.PaceFast), "fast (restart what lags) or gentle (restart only what correctness requires, wait for refreshes)")
	f.StringVar(&o.strategy, "strategy", "phased", "phased, or one-step (the field note's procedure: causes failed handshakes; needs --i-accept-downtime)")
	f.BoolVar(&o.acceptDowntime, "i-accept-downtime", false, "allow --strategy one-step")
	f.BoolVar(&o.plan, "plan", false, "print every step, each cacerts change, the restarts and what would block the run, without changing any cluster")
	f.BoolVar(&o.plan, "dry-run", false, "same as --plan")
	f.BoolVar(&o.yes, "yes", false, "do not ask for confirmation")
	f.BoolVar(&o.force, "force", false, "retire the old root even while proxies still hold certificates from the old CA (their mTLS breaks)")
	f.BoolVar(&o.breakLock, "break-lock", false, breakLockHelp)
	f.StringVar(&o.keyType, "key-type", string(pki.RSA4096), "key type of the intermediates meshca issues")
	f.IntVar(&o.intermediateDays, "intermediate-days", pki.DefaultIntermediateDays, "validity of the intermediates meshca issues (clamped to the root's)")
	f.DurationVar(&o.reloadTimeout, "reload-timeout", 3*time.Minute, "how long to wait for istiod to hot-reload cacerts before restarting it")
	f.DurationVar(&o.rolloutTimeout, "rollout-timeout", 10*time.Minute, "timeout of each rollout")
	f.DurationVar(&o.verifyTimeout, "verify-timeout", 0, "how long the fleet may take to converge in each phase (default 5m with --pace fast, the workload certificate lifetime with --pace gentle)")
	f.StringVar(&o.sandboxDir, "sandbox", "", "a meshca sandbox directory: report its probe's handshakes, failures, refused connections and resets per phase")
	f.StringVar(&o.report, "report", "", "write the run's HTML report to this file at the end (also when the run fails, up to where it stopped); with --sandbox it charts the probe")
	f.StringVarP(&o.output, "output", "o", "table", "table (progress on stderr, summary on stdout), or json (the events as JSON lines on stdout; with --plan, the plan as one JSON document)")
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
	pace, err := rotate.ParsePace(o.pace)
	if err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	format, err := report.ParseFormat(o.output, report.Table, report.JSON)
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
		Until: until, Pace: pace, OneStep: o.strategy == "one-step", Force: o.force, BreakLock: o.breakLock, KeyType: kt, IntermediateDays: o.intermediateDays,
		ReloadTimeout: o.reloadTimeout, RolloutTimeout: o.rolloutTimeout, VerifyTimeout: o.verifyTimeout,
		Now: env.Now,
	}
	clusters, err := newCA(env, o.root, o.caDir, &opts)
	if err != nil {
		return err
	}
	if o.plan || !o.yes {
		plans, err := rotate.New(clusters, opts).Plan(ctx)
		if err != nil {
			return err
		}
		w := env.Streams.Out
		if !o.plan {
			w = env.Streams.ErrOut
		}
		if format == report.JSON && o.plan {
			if err := report.Encode(w, format, map[string]any{"pace": pace, "clusters": plans}); err != nil {
				return err
			}
		} else {
			printPlan(w, pace, plans)
		}
		if rotate.Blocked(plans) {
			return cli.Exit(cli.ExitFailure, errors.New("the run would be refused: see the blockers above; nothing was changed"))
		}
		if o.plan {
			return nil
		}
		if !confirm(env.Streams.In, env.Streams.ErrOut, "Proceed with the rotation?") {
			return cli.Exit(cli.ExitFailure, errors.New("aborted: nothing was changed"))
		}
	}
	probe := newProbeObserver(ctx, o.sandboxDir)
	var obs rotate.Observer = &textObserver{w: env.Streams.ErrOut}
	if format == report.JSON {
		obs = &jsonObserver{enc: json.NewEncoder(env.Streams.Out)}
	}
	var events *htmlreport.Builder
	var sampler *probeSampler
	if o.report != "" {
		events = htmlreport.NewBuilder()
		if o.sandboxDir != "" {
			sampler = startProbeSampler(ctx, o.sandboxDir, env.Now)
		}
	}
	opts.Observer = rotate.ObserverFunc(func(ev rotate.Event) {
		probe.Observe(ev)
		obs.Observe(ev)
		if events != nil {
			events.Observe(ev)
		}
	})
	eng := rotate.New(clusters, opts)
	runErr := eng.Run(ctx)
	if format != report.JSON {
		printSummary(env.Streams.Out, eng.Summary(), probe)
	}
	if o.report != "" {
		var samples []htmlreport.ProbeSample
		if sampler != nil {
			samples = sampler.finish(ctx, o.sandboxDir, env.Now)
		}
		if err := writeReport(ctx, env, "meshca rotate --report", o.report, clusters, events, samples, runErr); err != nil {
			return errors.Join(runErr, fmt.Errorf("report %s: %w", o.report, err))
		}
		_, _ = fmt.Fprintf(env.Streams.ErrOut, "wrote the report %s\n", o.report)
	}
	return runErr
}

// newCA reads the new CA (--root into opts, or --ca-dir into each
// cluster) and connects to the clusters.
func newCA(env *cli.Env, root, caDir string, opts *rotate.Options) ([]*rotate.Cluster, error) {
	var dirs map[string]*bundle.Bundle
	var err error
	if root != "" {
		if opts.Root, err = bundle.LoadRoot(root, env.Now()); err != nil {
			return nil, err
		}
		opts.RootDir = root
	} else if dirs, err = loadCADirs(caDir, env.Contexts); err != nil {
		return nil, err
	}
	return clusters(env, dirs)
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
