package exporter

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/cli"
)

// run executes `meshca exporter ARGS` the way internal/app wires commands.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		Kube:    genericclioptions.NewConfigFlags(true),
		Now:     time.Now,
	}
	root := &cobra.Command{Use: "meshca", SilenceUsage: true, SilenceErrors: true}
	env.Kube.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Exit(cli.ExitUsage, err) })
	root.AddCommand(NewCmd(env))
	root.SetArgs(append([]string{"exporter"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	msg := errOut.String()
	if err != nil {
		msg += err.Error()
	}
	return cli.Code(err), msg
}

func TestExporterFlags(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Close() }()
	missing := filepath.Join(t.TempDir(), "no-kubeconfig")
	// A kubeconfig is only dialed by the exporter's loops, after listening.
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		args []string
		code int
		err  string
	}{
		"a zero interval is a usage error":           {args: []string{"--interval", "0s"}, code: cli.ExitUsage, err: "--interval and --fleet-interval must be positive"},
		"a negative fleet interval is a usage error": {args: []string{"--fleet-interval", "-1m"}, code: cli.ExitUsage, err: "--interval and --fleet-interval must be positive"},
		"a zero series cap is a usage error":         {args: []string{"--max-proxy-series", "0"}, code: cli.ExitUsage, err: "--max-proxy-series must be at least 1 (or use --aggregate-proxies)"},
		"a negative --warn-days is a usage error":    {args: []string{"--warn-days", "-3"}, code: cli.ExitUsage, err: "--warn-days must not be negative"},
		"a listen address without port is refused":   {args: []string{"--listen", "localhost"}, code: cli.ExitUsage, err: `--listen "localhost": want host:port`},
		"an unknown flag is a usage error":           {args: []string{"--bogus"}, code: cli.ExitUsage, err: "unknown flag"},
		"a port in use names the flag to change": {
			args: []string{"--kubeconfig", kubeconfig, "--listen", busy.Addr().String()}, code: cli.ExitFailure, err: "(choose another --listen)",
		},
		"a missing kubeconfig names the fix": {
			args: []string{"--kubeconfig", missing, "--listen", "127.0.0.1:0"}, code: cli.ExitFailure, err: "load kubeconfig",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, msg := run(t, tc.args...)
			if code != tc.code || !strings.Contains(msg, tc.err) {
				t.Errorf("exit %d %q, want exit %d with %q", code, msg, tc.code, tc.err)
			}
		})
	}
}
