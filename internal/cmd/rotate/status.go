package rotate

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/rotate"
)

// NewStatusCmd returns `meshca status`.
func NewStatusCmd(env *cli.Env) *cobra.Command {
	var (
		output string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show where the CA rotation stands in each cluster",
		Long: `Show, per cluster, the rotation phase derived from cacerts (none, trust,
issue, retire, complete, rolled-back), the fingerprints of the old and new
roots and of the current signer, the backup Secret, the run holding the rotation lock (if any), the fleet's
convergence per kind of proxy against what cacerts holds now, and what meshca
rotate would do next.

Without read access to Secret cacerts (it holds the CA private key), status
works from public objects: the roots istiod publishes in ConfigMap
istio-ca-root-cert and the rotation record; it says that the signer was not
checked.

JSON: {"clusters":[{"context", "phase", "backupSecret", "oldRoots":[fp],
"newRoot": fp, "signer": fp, "roots":[fp], "limited": "...", "lock":{"holder",
"root", "acquired", "renewed", "expired"}, "fleet":{...}, "next": "..."}]}
(fingerprints: lowercase hex SHA-256 of the DER).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, eng, err := readEngine(env, output)
			if err != nil {
				return err
			}
			sts, err := eng.Status(cmd.Context())
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, map[string]any{"clusters": sts})
			}
			for _, s := range sts {
				printStatus(env, s)
			}
			return nil
		},
	}
	multiContext(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

// readEngine parses -o (table, json or yaml) and connects to the clusters of
// a command that reads or prunes rotation state (status, backups).
func readEngine(env *cli.Env, output string) (report.Format, *rotate.Engine, error) {
	format, err := report.ParseFormat(output, report.Table, report.JSON, report.YAML)
	if err != nil {
		return "", nil, cli.Exit(cli.ExitUsage, err)
	}
	clusters, err := clusters(env, nil)
	if err != nil {
		return "", nil, err
	}
	return format, rotate.New(clusters, rotate.Options{Now: env.Now}), nil
}

func printStatus(env *cli.Env, s rotate.ClusterStatus) {
	w := env.Streams.Out
	_, _ = fmt.Fprintf(w, "cluster %s: phase %s\n", s.Context, s.Phase)
	if s.CA != "" {
		_, _ = fmt.Fprintf(w, "  CA             %s\n", s.CA)
	}
	if s.Record.Migration() {
		_, _ = fmt.Fprintln(w, "  migration      from istiod's self-signed CA (istio-ca-secret, backed up, never written)")
	}
	if s.Limited != "" {
		_, _ = fmt.Fprintf(env.Streams.ErrOut, "Warning: cluster %s: %s\n", s.Context, s.Limited)
		_, _ = fmt.Fprintf(w, "  signer         (not checked)\n  roots          %s\n", shortList(s.Roots))
	} else {
		_, _ = fmt.Fprintf(w, "  signer         %.12s\n  roots          %s\n", s.Signer, shortList(s.Roots))
	}
	if l := s.Lock; l != nil {
		state := fmt.Sprintf("renewed %s ago", env.Now().Sub(l.Renewed).Round(time.Second))
		if l.Expired {
			state = "EXPIRED: the next run takes it over"
		}
		_, _ = fmt.Fprintf(w, "  lock           held by %s since %s (rotating to root %.12s; %s)\n", l.Holder, l.Acquired.Format(time.RFC3339), l.Root, state)
	}
	if s.Record != nil {
		_, _ = fmt.Fprintf(w, "  old roots      %s\n  new root       %.12s\n  backup         %s\n", shortList(s.OldRoots), s.NewRoot, s.BackupSecret)
		for _, t := range s.Record.Transitions {
			line := "  " + string(t.Phase)
			if t.Written != nil {
				line += " written " + t.Written.Format(time.RFC3339)
			}
			if t.Proven != nil {
				line += ", proven " + t.Proven.Format(time.RFC3339)
			}
			_, _ = fmt.Fprintln(w, line)
		}
	}
	if s.Fleet != nil {
		t := report.NewTable(w, "  KIND", "TOTAL", "MATCH", "STALE", "NOTHING TO VERIFY", "UNREADABLE", "NOT READY")
		for _, k := range s.FleetByKind {
			c := k.Counts
			t.Row("  "+string(k.Kind), fmt.Sprint(c.Total), fmt.Sprint(c.Match), fmt.Sprint(c.Stale), fmt.Sprint(c.NothingToVerify), fmt.Sprint(c.Unreadable), fmt.Sprint(c.NotReady))
		}
		_ = t.Flush()
	}
	_, _ = fmt.Fprintf(w, "  next: %s\n", s.Next)
}

// NewRollbackCmd returns `meshca rollback`.
func NewRollbackCmd(env *cli.Env) *cobra.Command {
	var (
		yes, breakLock bool
	)
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Return to the CA backed up before the rotation",
		Long: `Restore the cacerts backup taken before the rotation's first write, stepping
back through the phases with the same guarded writes, restarts and fleet
proofs as rotate: from issue, first back to the old signer with both roots
trusted, then to the backup. Refused once the old root is retired: every
proxy then trusts only the new root, and restoring the old CA would strand
them; rotate to the old CA instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clusters, err := clusters(env, nil)
			if err != nil {
				return err
			}
			if !yes && !confirm(env.Streams.In, env.Streams.ErrOut, "Roll back to the backed-up CA?") {
				return cli.Exit(cli.ExitFailure, fmt.Errorf("aborted: nothing was changed"))
			}
			return rotate.New(clusters, rotate.Options{Observer: &textObserver{w: env.Streams.ErrOut}, BreakLock: breakLock, Now: env.Now}).Rollback(cmd.Context())
		},
	}
	multiContext(cmd)
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&breakLock, "break-lock", false, breakLockHelp)
	return cmd
}

const breakLockHelp = "take over the cluster's rotation lock (Lease meshca-rotation-lock) even though its holder still renews it; only for a run you know is gone (meshca status shows the holder)"
