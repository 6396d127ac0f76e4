// Package sandbox implements `meshca sandbox`: up, down, status and probe of
// the local proving ground (internal/sandbox).
package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/sandbox"
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
	f.StringVar(&o.ZtunnelVersion, "ztunnel-version", "1.28", "ztunnel behaviour: 1.28 (istiod trust fixed at start) or 1.30 (reloaded)")
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
  kubeconfig  %s
  try         meshca verify --kubeconfig %s
              meshca ztunnel certs --kubeconfig %s -n istio-system --node sandbox-0
              bin/kubectl --kubeconfig %s get pods -A
              meshca sandbox probe --dir %s
`, kc, kc, kc, kc, sb.Dir())
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
		Short: "Show the mTLS probe's handshake and failure counts",
		Long: `Show how many mTLS handshakes the sandbox's proxies made since the probe
started (or was last reset) and how many failed, by pair, with the last reason.

JSON: {"handshakes": N, "failures": M, "failuresByPair": {...}, "since": "<RFC 3339>"}`,
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
			_, _ = fmt.Fprintf(env.Streams.Out, "since %s: %d handshakes, %d failed\n", snap.Since.Format(time.RFC3339), snap.Handshakes, snap.Failures)
			if len(snap.FailuresByPair) > 0 {
				t := report.NewTable(env.Streams.Out, "PAIR", "FAILURES", "LAST REASON")
				pairs := make([]string, 0, len(snap.FailuresByPair))
				for p := range snap.FailuresByPair {
					pairs = append(pairs, p)
				}
				sort.Strings(pairs)
				for _, p := range pairs {
					f := snap.FailuresByPair[p]
					t.Row(p, fmt.Sprint(f.Count), f.LastReason)
				}
				return t.Flush()
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the sandbox directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	cmd.Flags().BoolVar(&reset, "reset", false, "reset the counters after reading them")
	return cmd
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
