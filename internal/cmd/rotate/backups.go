package rotate

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/rotate"
)

// NewBackupsCmd returns `meshca backups` (list, prune).
func NewBackupsCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backups",
		Short: "List and prune the cacerts backups meshca took before each rotation",
		Long: `Every rotation copies cacerts to a backup Secret in the Istio namespace
before its first write: cacerts-backup-<rotation id>, where the id is the
rotation's start time (UTC) and the start of the SHA-256 of the backed-up
bytes, labelled meshca.io/backup-of=cacerts, meshca.io/rotation-id and
meshca.io/content-sha256. A backup holds a CA private key: keep the few you
may need to roll back to, prune the rest.`,
	}
	cmd.AddCommand(newBackupsListCmd(env), newBackupsPruneCmd(env))
	return cmd
}

func newBackupsListCmd(env *cli.Env) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the cacerts backups, newest first, with what they hold and what uses them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, eng, err := readEngine(env, output)
			if err != nil {
				return err
			}
			bs, err := eng.Backups(cmd.Context())
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, map[string]any{"backups": bs})
			}
			if len(bs) == 0 {
				_, _ = fmt.Fprintln(env.Streams.ErrOut, "No cacerts backups found.")
				return nil
			}
			printBackups(env.Streams.Out, bs, env)
			return nil
		},
	}
	multiContext(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

func printBackups(w io.Writer, bs []rotate.Backup, env *cli.Env) {
	t := report.NewTable(w, "CLUSTER", "NAME", "OF", "ROTATION", "AGE", "ROOTS", "SIGNER", "USED BY")
	for _, b := range bs {
		roots, signer := shortList(b.Roots), fmt.Sprintf("%.12s", b.Signer)
		if b.Err != "" {
			roots, signer = "unreadable: "+b.Err, "-"
		}
		t.Row(b.Cluster, b.Name, b.Of, or(b.RotationID, "-"), duration.HumanDuration(env.Now().Sub(b.Created)), roots, signer, or(b.Use, "-"))
	}
	_ = t.Flush()
}

func newBackupsPruneCmd(env *cli.Env) *cobra.Command {
	var (
		keep   int
		dryRun bool
		output string
	)
	cmd := &cobra.Command{
		Use:   "prune --keep N",
		Short: "Delete all but the newest N cacerts backups (never the backup of a rotation in progress)",
		Long: `Delete the cacerts backups beyond the newest N in each cluster. The backup
of a rotation still in progress is never deleted, whatever N: meshca rollback
needs it. A prune holds the rotation lock, so it cannot race a rotation that
is taking its backup. --dry-run shows what would be deleted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("keep") {
				return cli.Usage("give --keep N: the number of newest backups to keep in each cluster")
			}
			if keep < 0 {
				return cli.Usage("--keep %d: give 0 or more", keep)
			}
			format, eng, err := readEngine(env, output)
			if err != nil {
				return err
			}
			res, err := eng.PruneBackups(cmd.Context(), keep, dryRun)
			if err != nil {
				return err
			}
			if format.Structured() {
				return report.Encode(env.Streams.Out, format, res)
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			w := env.Streams.Out
			for _, b := range res.Deleted {
				_, _ = fmt.Fprintf(w, "%s secret %s (cluster %s, rotation %s)\n", verb, b.Name, b.Cluster, or(b.RotationID, "-"))
			}
			for _, b := range res.Protected {
				_, _ = fmt.Fprintf(w, "kept secret %s (cluster %s): the backup of the %s; meshca rollback needs it\n", b.Name, b.Cluster, b.Use)
			}
			_, _ = fmt.Fprintf(w, "%d %s, %d kept (--keep %d), %d protected\n", len(res.Deleted), verb, len(res.Kept), keep, len(res.Protected))
			return nil
		},
	}
	multiContext(cmd)
	cmd.Flags().IntVar(&keep, "keep", 0, "how many of the newest backups to keep in each cluster (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be deleted, delete nothing")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	return cmd
}

// shortList is fingerprints shortened to 12 hex digits, comma-separated.
func shortList(fps []string) string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = fmt.Sprintf("%.12s", f)
	}
	return strings.Join(out, ", ")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
