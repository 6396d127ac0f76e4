// Package app assembles meshca's command tree and is the only place where an
// error becomes an exit code.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/cmd/ca"
	checkcmd "github.com/meshca/meshca/internal/cmd/check"
	exportercmd "github.com/meshca/meshca/internal/cmd/exporter"
	"github.com/meshca/meshca/internal/cmd/proxy"
	rotatecmd "github.com/meshca/meshca/internal/cmd/rotate"
	sandboxcmd "github.com/meshca/meshca/internal/cmd/sandbox"
	"github.com/meshca/meshca/internal/cmd/verify"
	"github.com/meshca/meshca/internal/cmd/ztunnel"
	"github.com/meshca/meshca/internal/kube"
)

// Version is stamped at build time with -ldflags "-X .../internal/app.Version=…".
var Version = "dev"

const exitCodesHelp = `Exit codes:
  0  success (warnings allowed)
  1  error, or a check or verification that failed
  2  usage error (unknown flag, missing argument)
  3  check passed with warnings past a threshold (meshca check)`

// Main runs meshca with args and returns the process exit code.
func Main(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	return Run(ctx, args, &cli.Env{Streams: streams, Now: time.Now})
}

// Run is Main with a given environment (tests inject streams and a clock).
func Run(ctx context.Context, args []string, env *cli.Env) int {
	if env.Kube == nil {
		env.Kube = genericclioptions.NewConfigFlags(true)
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Version == "" {
		env.Version = version()
	}
	streams := env.Streams
	root := NewRootCmd(env)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code := cli.Code(err)
	var exitErr *cli.ExitError
	isExit := errors.As(err, &exitErr)
	switch {
	case err == nil:
	case isExit && exitErr.Err == nil:
	default:
		if !isExit && isUsageError(err) {
			code = cli.ExitUsage
		}
		_, _ = fmt.Fprintf(streams.ErrOut, "Error: %v\n", err)
		if p, ok := kube.ForbiddenPermission(err); ok {
			_, _ = fmt.Fprintf(streams.ErrOut, "Permission: %s\n", p.Hint())
		}
		if code == cli.ExitUsage {
			_, _ = fmt.Fprintln(streams.ErrOut, "Run 'meshca --help' for usage.")
		}
	}
	return code
}

// NewRootCmd builds the command tree.
func NewRootCmd(env *cli.Env) *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:   "meshca",
		Short: "Rotate the CA of an Istio mesh with zero downtime, and prove it",
		Long: `meshca rotates the certificate authority (root and intermediates) of an Istio
service mesh — ambient (ztunnel, waypoints) and sidecar — in three verified
phases (trust, issue, retire), and works offline on CA material too.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			setupLogging(env, verbose)
			if len(env.Contexts) > 1 && cmd.Annotations[cli.AnnotationMultiContext] != "true" {
				return cli.Usage("meshca %s works on one cluster: give --context once", cmd.Name())
			}
			if len(env.Contexts) > 0 {
				env.Kube.Context = &env.Contexts[0]
			}
			return nil
		},
	}
	root.SetIn(env.Streams.In)
	root.SetOut(env.Streams.Out)
	root.SetErr(env.Streams.ErrOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Exit(cli.ExitUsage, err) })
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail to stderr")
	// --context is repeatable (a rotation spans the clusters of a mesh):
	// meshca declares it instead of ConfigFlags, which declares a single one.
	env.Kube.Context = nil
	env.Kube.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringArrayVar(&env.Contexts, "context", nil, "the name of the kubeconfig context to use; rotate, status and rollback take it once per cluster of a multi-cluster mesh")

	root.AddCommand(newVersionCmd(env), ca.NewCmd(env), checkcmd.NewCmd(env), ztunnel.NewCmd(env), proxy.NewCmd(env), verify.NewCmd(env), sandboxcmd.NewCmd(env), rotatecmd.NewCmd(env), rotatecmd.NewStatusCmd(env), rotatecmd.NewRollbackCmd(env), rotatecmd.NewBackupsCmd(env), rotatecmd.NewRecoverCmd(env), rotatecmd.NewReportCmd(env), exportercmd.NewCmd(env))
	return root
}

func newVersionCmd(env *cli.Env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print meshca's version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(env.Streams.Out, "meshca %s\n", version())
			return err
		},
	}
}

// version is Version, or the module version of a go install'ed binary.
func version() string {
	v := Version
	if info, ok := debug.ReadBuildInfo(); ok && v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	return v
}

// setupLogging sends slog to stderr, at debug level under -v, and routes
// klog (client-go's logger) into it, so that -v also shows client-go's own
// detail (klog verbosity 4) and nothing of klog bypasses meshca's stderr.
func setupLogging(env *cli.Env, verbose bool) {
	level, klogV := slog.LevelWarn, "0"
	if verbose {
		level, klogV = slog.LevelDebug, "4"
	}
	logger := slog.New(slog.NewTextHandler(env.Streams.ErrOut, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)
	var fs flag.FlagSet
	klog.InitFlags(&fs)
	_ = fs.Set("v", klogV)
	klog.SetSlogLogger(logger)
}

// isUsageError recognises cobra's argument errors, which it returns as plain
// errors.
func isUsageError(err error) bool {
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand"} {
		if strings.Contains(err.Error(), p) {
			return true
		}
	}
	return false
}
