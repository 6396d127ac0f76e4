// Package sandbox implements `meshca sandbox`: up, down, status and probe of
// the local proving ground (internal/sandbox).
package sandbox

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// NewCmd returns `meshca sandbox`.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run a local Istio ambient mesh (real kube-apiserver, kwok, istiod) to try meshca on",
		Long: `The sandbox is a local proving ground: a real control plane (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kwok fake nodes),
real istiod processes, and a simulated ambient data plane (a ztunnel per node,
waypoints, an ingress gateway) whose proxies get their certificates from the
real istiod and exchange real mTLS handshakes, counted by a probe.

The binaries are built from pinned Go modules by 'make controlplane' (about 9
minutes the first time).`,
	}
	cmd.AddCommand(newUpCmd(env), newDownCmd(env), newStatusCmd(env), newProbeCmd(env))
	return cmd
}

const detachedFlag = "internal-detached-child"

func newUpCmd(env *cli.Env) *cobra.Command {
	o := sandbox.Options{}
	var (
		detach, child bool
		keyType       string
	)
	cmd := &cobra.Command{
		Use:   "up --dir DIR",
		Short: "Start the sandbox and write DIR/kubeconfig",
		Example: `  meshca sandbox up --dir .sandbox --nodes 3 --detach
  meshca verify --kubeconfig .sandbox/kubeconfig
  meshca sandbox down --dir .sandbox`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Dir == "" {
				return cli.Usage("--dir is required")
			}
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			o.KeyType = kt
			o.Logf = func(format string, args ...any) { _, _ = fmt.Fprintf(env.Streams.ErrOut, format+"\n", args...) }
			if detach && !child {
				return startDetached(cmd.Context(), env, o.Dir)
			}
			sb, err := sandbox.Start(cmd.Context(), o)
			if err != nil {
				return err
			}
			printUsage(env, sb)
			<-cmd.Context().Done()
			o.Logf("stopping the sandbox")
			return sb.Stop()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "dir", "", "directory for everything the sandbox writes (kubeconfig, logs, CA)")
	f.IntVar(&o.Nodes, "nodes", 3, "kwok nodes (one ztunnel each)")
	f.IntVar(&o.Workloads, "workloads", 6, "ambient workload pods spread over the nodes")
	f.DurationVar(&o.CertTTL, "cert-ttl", 24*time.Hour, "workload certificate lifetime (SECRET_TTL); proxies refresh at half of it")
	f.BoolVar(&o.MultiRoot, "multiroot", true, "set ISTIO_MULTIROOT_MESH=true on istiod")
	f.BoolVar(&o.XDSAgent, "xds-agent", true, "set PROXY_CONFIG_XDS_AGENT=true in the mesh config (PCDS for envoy proxies)")
	f.StringVar(&o.ZtunnelVersion, "ztunnel-version", "1.28", "simulated ztunnel: 1.28 (1.28.1: istiod trust fixed at start), 1.28.6 or 1.30 (CA_CERT_WATCHER re-reads it)")
	f.DurationVar(&o.GracePeriod, "grace-period", 30*time.Second, "terminationGracePeriodSeconds of the proxy pods (the Istio charts' 30s); ztunnel closes what it holds at grace-5s (grace-1s up to 10s), envoy after min(5s, grace-1s)")
	f.StringVar(&o.Agent, "agent", sandbox.AgentReal, "what runs the envoy pods (waypoints, gateway, sidecars): real (the real pilot-agent built from the istio pin, with meshca's envoy stand-in as its envoy) or simulated (the in-process simulated istio-agent)")
	f.IntVar(&o.Sidecars, "sidecars", 0, "sidecar workloads in namespace "+sandbox.SidecarNamespace+" (labelled istio-injection=enabled), injected by istiod's own webhook; their pods are created with the mesh config of that moment (--xds-agent=false: without PROXY_CONFIG_XDS_AGENT)")
	f.DurationVar(&o.RootCertVolumeDelay, "root-cert-volume-delay", sandbox.DefaultRootCertVolumeDelay, "with --agent real: how long after istiod rewrites istio-ca-root-cert the file mounted into the agents changes (kubelet's ConfigMap volume refresh)")
	f.IntVar(&o.Clusters, "clusters", 1, "clusters sharing one root, an intermediate each (contexts cluster-1 … cluster-N in DIR/kubeconfig)")
	f.IntVar(&o.LongLived, "long-lived", 4, "long-lived mTLS connections the probe keeps open per pair kind (negative: none)")
	f.StringVar(&o.CA, "ca", sandbox.CAPlugin, "istiod's CA: plugin (cacerts from a generated root and intermediate), self-signed (istiod's own istio-ca-secret, no cacerts) or expiring (cacerts whose intermediate expires --ca-lifetime after start)")
	f.DurationVar(&o.CALifetime, "ca-lifetime", 0, "with --ca expiring: how long after start the CA expires (default 5m)")
	f.BoolVar(&o.ExpireRoot, "expire-root", false, "with --ca expiring: the root expires (and its intermediate with it) instead of the intermediate only")
	f.StringVar(&keyType, "key-type", "ecdsa-p256", "key type of the sandbox's CA")
	f.DurationVar(&o.ProbeInterval, "probe-interval", 50*time.Millisecond, "pause between mTLS probe rounds (0 disables the probe)")
	f.BoolVar(&detach, "detach", false, "return once the sandbox is ready and keep it running in the background")
	f.BoolVar(&child, detachedFlag, false, "")
	_ = f.MarkHidden(detachedFlag)
	return cmd
}

func printUsage(env *cli.Env, sb *sandbox.Sandbox) {
	kc := sb.Kubeconfig()
	_, _ = fmt.Fprintf(env.Streams.Out, `sandbox ready
  istiod      %s (real pilot-discovery built from istio.io/istio; ztunnel is simulated)
  envoy pods  %s
  kubeconfig  %s
`, sb.IstiodVersion(), sb.EnvoyPods(), kc)
	var ctxFlags string
	for _, m := range sb.Members() {
		if m.Name() != "" {
			ctxFlags += " --context " + m.Name()
		}
	}
	if ctxFlags != "" {
		_, _ = fmt.Fprintf(env.Streams.Out, "  contexts   %s\n", strings.TrimSpace(strings.ReplaceAll(ctxFlags, " --context ", " ")))
	}
	_, _ = fmt.Fprintf(env.Streams.Out, `  try         meshca verify --kubeconfig %s
              meshca ztunnel certs --kubeconfig %s -n istio-system --node sandbox-0
              bin/kubectl --kubeconfig %s get pods -A
              meshca sandbox probe --dir %s
`, kc, kc, kc, sb.Dir())
	if ctxFlags != "" {
		_, _ = fmt.Fprintf(env.Streams.Out, "              meshca rotate --kubeconfig %s%s --root DIR --plan\n", kc, ctxFlags)
	}
}

// startDetached re-runs `sandbox up` in its own session with output to
// DIR/sandbox.log and returns once the sandbox reports ready.
func startDetached(ctx context.Context, env *cli.Env, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, sandbox.StateFile))
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "sandbox.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	args := append([]string{}, os.Args[1:]...)
	args = append(args, "--"+detachedFlag)
	child := exec.Command(exe, args...)
	child.Stdout, child.Stderr = logFile, logFile
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		return fmt.Errorf("start detached sandbox: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	_, _ = fmt.Fprintf(env.Streams.ErrOut, "starting the sandbox in the background (pid %d, log %s)\n", child.Process.Pid, logPath)
	for {
		if st, err := sandbox.ReadState(dir); err == nil && st.Ready {
			_, _ = fmt.Fprintf(env.Streams.Out, "sandbox ready (pid %d)\n  kubeconfig  %s\n  stop with   meshca sandbox down --dir %s\n", st.PID, st.Kubeconfig, dir)
			return nil
		}
		select {
		case err := <-exited:
			tail, _ := os.ReadFile(logPath)
			return fmt.Errorf("the sandbox exited during start-up (%w):\n%s", err, lastLines(string(tail), 30))
		case <-ctx.Done():
			_ = child.Process.Signal(syscall.SIGTERM)
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newDownCmd(env *cli.Env) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down --dir DIR",
		Short: "Stop everything `sandbox up` started",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return cli.Usage("--dir is required")
			}
			if err := sandbox.Down(dir, 30*time.Second); err != nil {
				return err
			}
			_, err := fmt.Fprintf(env.Streams.Out, "sandbox in %s stopped\n", dir)
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the sandbox directory")
	return cmd
}

func newStatusCmd(env *cli.Env) *cobra.Command {
	var dir, output string
	cmd := &cobra.Command{
		Use:   "status --dir DIR",
		Short: "Show the sandbox's components and proxies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return cli.Usage("--dir is required")
			}
			format, err := report.ParseFormat(output, report.Table, report.JSON, report.YAML)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			st, err := sandbox.FetchStatus(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, st)
			}
			return st.Print(env.Streams.Out)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the sandbox directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

func newProbeCmd(env *cli.Env) *cobra.Command {
	var (
		dir, output string
		reset       bool
	)
	cmd := &cobra.Command{
		Use:   "probe --dir DIR",
		Short: "Show what the mTLS probe counted: failed handshakes, refusals, resets, failed CSRs",
		Long: `Show every disruption the sandbox's probe counted since it started (or was
last reset): short mTLS handshakes and how many failed, connections refused
because a target had no live proxy (a restart gap), long-lived connections
that ended without the probe closing them (resets, with the reason: drain
deadline, pod deleted, TLS error), and failed certificate requests of the
proxies — by pair, by pair kind and as a time-ordered event list.

JSON: {"handshakes", "failures", "refused", "resets", "connections",
"issuanceFailures", "skipped", "failuresByPair", "refusedByPair",
"resetsByPair", "issuanceFailuresByProxy", "byPairKind", "restarts",
"events": [{"time", "type", "pair", "pairKind", "proxy", "reason"}],
"eventsDropped", "since"}`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return cli.Usage("--dir is required")
			}
			format, err := report.ParseFormat(output, report.Table, report.JSON, report.YAML)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			snap, err := sandbox.FetchProbe(cmd.Context(), dir, reset)
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, snap)
			}
			return printProbe(env, snap)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the sandbox directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	cmd.Flags().BoolVar(&reset, "reset", false, "reset the counters after reading them")
	return cmd
}

// printProbe writes the probe's counters: a summary line, the pair kinds,
// then every pair and proxy with a disruption and its last reason.
func printProbe(env *cli.Env, snap *mesh.Snapshot) error {
	w := env.Streams.Out
	_, _ = fmt.Fprintf(w, "since %s: %d handshakes, %d failed, %d refused; %d long-lived connections, %d reset; %d failed CSRs",
		snap.Since.Format(time.RFC3339), snap.Handshakes, snap.Failures, snap.Refused, snap.Connections, snap.Resets, snap.IssuanceFailures)
	if snap.Admissions > 0 {
		_, _ = fmt.Fprintf(w, "; %d admission checks through istiod's webhooks, %d failed", snap.Admissions, snap.AdmissionFailures)
	}
	_, _ = fmt.Fprint(w, "\n\n")
	t := report.NewTable(w, "PAIR KIND", "HANDSHAKES", "FAILED", "REFUSED", "LONG-LIVED", "RESETS")
	for _, k := range slices.Sorted(maps.Keys(snap.ByPairKind)) {
		c := snap.ByPairKind[k]
		t.Row(k, fmt.Sprint(c.Handshakes), fmt.Sprint(c.Failures), fmt.Sprint(c.Refused), fmt.Sprint(c.Connections), fmt.Sprint(c.Resets))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	type row struct{ what, key, count, reason string }
	var rows []row
	add := func(what string, m map[string]mesh.PairFailures) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			rows = append(rows, row{what, k, fmt.Sprint(m[k].Count), m[k].LastReason})
		}
	}
	add("failed", snap.FailuresByPair)
	add("refused", snap.RefusedByPair)
	for _, k := range slices.Sorted(maps.Keys(snap.ResetsByPair)) {
		r := snap.ResetsByPair[k]
		rows = append(rows, row{"reset", k, fmt.Sprint(r.Count), r.LastReason})
	}
	add("failed CSR", snap.IssuanceFailuresByProxy)
	if len(rows) == 0 {
		return nil
	}
	_, _ = fmt.Fprintln(w)
	t = report.NewTable(w, "WHAT", "PAIR OR PROXY", "COUNT", "LAST REASON")
	for _, r := range rows {
		t.Row(r.what, r.key, r.count, r.reason)
	}
	return t.Flush()
}

func lastLines(s string, n int) string {
	lines := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			lines++
			if lines > n {
				return s[i+1:]
			}
		}
	}
	return s
}
