// Package verify holds `meshca verify`: what every proxy of the mesh trusts
// and which intermediate signed its certificates, checked against the CA
// istiod signs with. Flags and printing only; discovery lives in
// internal/mesh, the checks and the fleet walk in internal/verify, cluster
// access in internal/kube.
package verify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/proxy"
	"github.com/meshca/meshca/internal/report"
	fleet "github.com/meshca/meshca/internal/verify"
)

type options struct {
	env          *cli.Env
	expectRoots  []string
	expectSigner string
	allowExtra   bool
	warnDays     int
	parallel     int
	timeout      time.Duration
	attempts     int
	port         int
	output       string
	all          bool
	quiet        bool

	format report.Format
	// connect reaches the cluster; a seam for tests.
	connect func(o *options) (fleet.Source, error)
}

// NewCmd returns `meshca verify`.
func NewCmd(env *cli.Env) *cobra.Command {
	return newCmd(env, connect)
}

func newCmd(env *cli.Env, connect func(*options) (fleet.Source, error)) *cobra.Command {
	o := &options{env: env, connect: connect}
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Verify that every proxy of the mesh trusts the expected roots and holds certificates from the expected signer",
		Long: `Discover every proxy of the mesh — ztunnel pods, waypoints, gateways and
sidecars — read what each one holds from its admin API (port 15000, by
port-forward; at most --parallel at a time, each within --timeout), and check
it against the CA istiod signs with:

  - it trusts exactly the expected roots, compared as a set of SHA-256
    fingerprints (a root listed twice is noted, never failed);
  - every workload leaf it holds was signed by the expected signer and
    chains to one of those roots;
  - every identity is Available (not Initializing or Unavailable);
  - every certificate it holds is fresh: no leaf past its refresh point
    (older than 60% of its lifetime: ztunnel and istio-agent renew at half
    of it, so the proxy has stopped refreshing), no certificate expired or
    not yet valid, no root or intermediate expiring within --warn-days.

Without --expect-roots or --expect-signer the expectation is the cacerts
Secret in the Istio namespace: the roots of root-cert.pem and ca-cert.pem as
the signer (istio-ca-secret when istiod uses its self-signed CA). With either
flag, only the flags are checked. -n names the Istio namespace (where istiod
and cacerts live); by default it is found from the istiod Deployment.

Each proxy is reported as match, stale (holds something else: a missing or
extra root, a leaf from another signer, an identity without certificate, an
expired or not yet valid CA certificate), not refreshing (a leaf past its
refresh point or expired), expiring (a root or intermediate within
--warn-days), nothing to verify (a ztunnel without certificates because no ambient workload
runs on its node — shown apart, never counted as a match, does not fail),
unreadable (port-forward, timeout, HTTP or parse error) or not ready (pod not
running; not read). The istio-ca-root-cert ConfigMap of every namespace must
carry the expected roots, byte for byte when they come from cacerts.

The table shows counts per kind, then the proxies that fail with their
problems; -o wide lists every proxy. Progress goes to stderr (not with -o
json|yaml or -q).

-o json prints a FleetVerification document (apiVersion meshca.io/v1alpha1):
  ok, expectation {source, roots[], signer, allowExtraRoots, rootCertSHA256,
  warnDays}, total and kinds[] {kind, total, match, stale, notRefreshing,
  expiring, nothingToVerify, unreadable, notReady}, rootConfigMaps {total, match, stale[]}, proxiesListed
  (nonMatching, or all with --all), proxies[] {kind, namespace, name, node,
  owner, status (match|stale|not-refreshing|expiring|nothing-to-verify|
  unreadable|not-ready), reason, identities, roots[], duplicateRoots[], signers[],
  leafs[] {identity, notBefore, notAfter, freshness}, problems[], notes[]},
  walk {parallel, timeoutSeconds, discoverySeconds, readSeconds}, warnings[]. Fields are only ever added within an apiVersion.

Exit status: 0 when every proxy matches (or has nothing to verify) and every
istio-ca-root-cert ConfigMap matches; 1 when any proxy is stale, not
refreshing, expiring, unreadable or not ready, a ConfigMap is stale, or verification could not run; 2 on usage
errors.`,
		Example: `  # Verify the whole mesh against cacerts
  meshca verify

  # Every proxy, with the roots and signers each one holds
  meshca verify -o wide

  # Phase 1 of a rotation: every proxy must trust both roots
  meshca verify --expect-roots 3f2a...,9bc1...

  # For scripts and the rotation engine
  meshca verify -o json --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.expectRoots, "expect-roots", nil, "fingerprints (SHA-256, hex) of the roots every proxy must trust, comma separated (default: root-cert.pem of cacerts)")
	f.StringVar(&o.expectSigner, "expect-signer", "", "fingerprint of the intermediate that must have signed every leaf (default: ca-cert.pem of cacerts)")
	f.BoolVar(&o.allowExtra, "allow-extra-roots", false, "accept proxies that trust more roots than expected")
	f.IntVar(&o.warnDays, "warn-days", fleet.DefaultWarnDays, "fail proxies holding a root or intermediate that expires within this many days; 0 disables")
	f.IntVar(&o.parallel, "parallel", fleet.DefaultParallel, "how many proxies to read at once")
	f.DurationVar(&o.timeout, "timeout", fleet.DefaultTimeout, "time allowed to read each proxy, retries included")
	f.IntVar(&o.attempts, "attempts", kube.DefaultAttempts, "attempts for transient failures of each read")
	f.IntVar(&o.port, "port", kube.AdminPort, "admin port of the proxies in their pods")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table|wide|json|yaml")
	f.BoolVar(&o.all, "all", false, "list every proxy in -o json|yaml, not only those that do not match")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no progress or warnings on stderr")
	return cmd
}

func (o *options) complete() error {
	var err error
	if o.format, err = report.ParseFormat(o.output, report.Table, report.Wide, report.JSON, report.YAML); err != nil {
		return cli.Exit(cli.ExitUsage, err)
	}
	if o.warnDays < 0 {
		return cli.Usage("--warn-days must not be negative (0 disables the expiry warning)")
	}
	if o.parallel < 1 {
		return cli.Usage("--parallel must be at least 1")
	}
	if o.timeout <= 0 {
		return cli.Usage("--timeout must be positive")
	}
	if o.attempts < 1 {
		return cli.Usage("--attempts must be at least 1")
	}
	if o.port <= 0 || o.port > 65535 {
		return cli.Usage("--port %d: not a port number", o.port)
	}
	if o.expectSigner != "" || len(o.expectRoots) > 0 {
		if _, err := o.flagExpectation(); err != nil {
			return cli.Exit(cli.ExitUsage, err)
		}
	}
	return nil
}

func (o *options) flagExpectation() (fleet.Expectation, error) {
	exp, err := fleet.NewExpectation("flags", o.expectRoots, o.expectSigner)
	if err != nil {
		return exp, err
	}
	if len(exp.Roots) == 0 {
		return exp, errors.New("--expect-signer needs --expect-roots too: give the roots every proxy must trust")
	}
	exp.AllowExtraRoots = o.allowExtra
	exp.WarnDays = o.warnDays
	return exp, nil
}

// connect reaches the cluster of the global kube flags.
func connect(o *options) (fleet.Source, error) {
	client, err := kube.NewClient(o.env.Kube)
	if err != nil {
		return fleet.Source{}, err
	}
	lo := fleet.LiveOptions{Port: o.port, Attempts: o.attempts, Timeout: o.timeout}
	if client.NamespaceExplicit {
		lo.Namespace = client.Namespace
	}
	return fleet.LiveSource(client, lo)
}

func (o *options) run(ctx context.Context) error {
	now := o.env.Now
	errOut := o.env.Streams.ErrOut
	quiet := o.quiet || o.format.Structured()
	src, err := o.connect(o)
	if err != nil {
		return err
	}

	prog := newProgress(errOut, quiet)
	prog.update("discovering the mesh")
	rep, walkErr := fleet.Run(ctx, src, func(ctx context.Context, ns string) (fleet.Expectation, error) {
		return o.expectation(ctx, src.Clientset, ns)
	}, fleet.Options{
		Parallel: o.parallel,
		Timeout:  o.timeout,
		Now:      now,
		Progress: func(done, total int) {
			prog.update(fmt.Sprintf("reading proxies %d/%d (parallel %d)", done, total, o.parallel))
		},
	})
	if rep == nil {
		prog.fail("discovering the mesh")
		return walkErr
	}
	rep.ListAll = o.all
	total := rep.Total.Total
	step := fmt.Sprintf("read %d proxies in %s (parallel %d)", total, rep.Walk.Read.Round(time.Millisecond), rep.Walk.Parallel)
	if rep.Total.Unreadable > 0 {
		step += fmt.Sprintf(": %d unreadable", rep.Total.Unreadable)
		prog.fail(step)
	} else {
		prog.done(step)
	}
	if walkErr != nil {
		return fmt.Errorf("verify interrupted: %w", walkErr)
	}
	if !o.quiet {
		for _, w := range rep.Warnings {
			_, _ = fmt.Fprintf(errOut, "Warning: %s\n", w)
		}
	}
	if err := o.print(rep); err != nil {
		return err
	}
	if !rep.OK() {
		return cli.Silent(cli.ExitFailure)
	}
	return nil
}

// expectation is the flags' expectation, or that of the CA in namespace.
func (o *options) expectation(ctx context.Context, cs kubernetes.Interface, namespace string) (fleet.Expectation, error) {
	if o.expectSigner != "" || len(o.expectRoots) > 0 {
		return o.flagExpectation()
	}
	ca, err := mesh.ReadCA(ctx, cs, namespace)
	if apierrors.IsForbidden(err) {
		return o.publicExpectation(ctx, cs, namespace, err)
	}
	if errors.Is(err, mesh.ErrNotFound) {
		return fleet.Expectation{}, fmt.Errorf("%w: nothing to verify against; pass --expect-roots (and --expect-signer), or -n with the Istio namespace", err)
	}
	if err != nil {
		return fleet.Expectation{}, err
	}
	exp := fleet.ExpectationFromCA(ca)
	exp.AllowExtraRoots = o.allowExtra
	exp.WarnDays = o.warnDays
	return exp, nil
}

// publicExpectation is the expectation without read access to Secrets: the
// roots istiod publishes in the istio-ca-root-cert ConfigMap of its
// namespace (the exact root-cert.pem bytes, facts §1). The signer of the
// leaves cannot be known from public objects, so it is not checked, and
// the command says so.
func (o *options) publicExpectation(ctx context.Context, cs kubernetes.Interface, namespace string, forbidden error) (fleet.Expectation, error) {
	root, err := mesh.ReadPublicRoots(ctx, cs, namespace)
	if err != nil {
		return fleet.Expectation{}, errors.Join(forbidden, err)
	}
	exp := fleet.Expectation{
		Source:          fmt.Sprintf("configmap %s/%s", namespace, proxy.RootConfigMapName),
		Roots:           root.Trust().Roots,
		RootCertSHA256:  (&mesh.RootConfigMap{Data: root.Data}).DataSHA256(),
		AllowExtraRoots: o.allowExtra,
	}
	if !o.quiet {
		_, _ = fmt.Fprintf(o.env.Streams.ErrOut, "Warning: no access to secret %s/%s: checking trust against %s; the signer of the workload certificates is not checked (pass --expect-signer, or grant get on that secret)\n",
			namespace, mesh.CACertsSecret, exp.Source)
	}
	return exp, nil
}

// progress is the one line of progress on stderr: rewritten in place on a
// terminal, only the final state otherwise.
type progress struct {
	w     io.Writer
	quiet bool
	tty   bool
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, quiet: quiet}
	if f, ok := w.(*os.File); ok {
		p.tty = term.IsTerminal(int(f.Fd()))
	}
	return p
}

func (p *progress) update(msg string) {
	if p.quiet || !p.tty {
		return
	}
	_, _ = fmt.Fprintf(p.w, "\r\033[K… %s", msg)
}

func (p *progress) done(msg string) { p.end("✓", msg) }
func (p *progress) fail(msg string) { p.end("✗", msg) }

func (p *progress) end(mark, msg string) {
	if p.quiet {
		return
	}
	if p.tty {
		_, _ = fmt.Fprint(p.w, "\r\033[K")
	}
	_, _ = fmt.Fprintf(p.w, "%s %s\n", mark, msg)
}

// shortList renders fingerprints by their first 12 digits.
func shortList(fps []string) string {
	if len(fps) == 0 {
		return "-"
	}
	out := make([]string, len(fps))
	for i, fp := range fps {
		out[i] = fp[:min(12, len(fp))]
	}
	return strings.Join(out, ",")
}
