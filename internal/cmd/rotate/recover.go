package rotate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/report"
	"github.com/meshca/meshca/internal/rotate"
)

type recoverOptions struct {
	root, caDir, keyType, output  string
	within                        time.Duration
	force, yes                    bool
	intermediateDays              int
	reloadTimeout, rolloutTimeout time.Duration
	verifyTimeout                 time.Duration
}

// NewRecoverCmd returns `meshca recover`.
func NewRecoverCmd(env *cli.Env) *cobra.Command {
	o := &recoverOptions{}
	cmd := &cobra.Command{
		Use:   "recover (--root DIR | --ca-dir DIR)",
		Short: "Restore traffic after the mesh CA expired, in the fewest steps",
		Long: `When the root or intermediate in cacerts has expired (or will within
--within), mTLS already fails and the phases of meshca rotate no longer apply.
recover restores traffic in the fewest steps:

  1. copy the expired cacerts to a backup Secret (read back byte for byte)
  2. ONE write of cacerts: the new intermediate (issued under --root, or your
     bundle from --ca-dir) with root-cert.pem = the new root only
  3. restart istiod (a root change is not hot-reloaded), and wait until it
     serves from the new CA (istio-ca-root-cert, every replica's chain)
  4. restart every ztunnel, then every envoy workload (waypoints, gateways,
     sidecars), in that order
  5. prove the fleet: every proxy holds a certificate from the new CA and
     trusts only the new root

It reads the expired certificates without verifying them, so it works when
everything in the cluster has expired. Traffic between two proxies resumes
once both hold the new CA; the summary reports the seconds from the start to
istiod serving and to the whole fleet proven. A run that is interrupted after
its write continues with the restarts when run again.

It refuses a healthy CA (nothing expiring within --within) unless --force:
meshca rotate replaces a valid CA with zero downtime, recover does not.

-o json prints the run's events as JSON lines and then
{"recoveries":[{"cluster","expired":[...],"backupSecret","newRoot",
"newSigner","writtenSeconds","istiodServingSeconds","provenSeconds"}]}.`,
		Example: `  meshca ca root --out ./new-root
  meshca recover --root ./new-root --yes
  meshca recover --ca-dir ./my-pki-bundle --within 24h --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (o.root == "") == (o.caDir == "") {
				return cli.Usage("give exactly one of --root DIR or --ca-dir DIR")
			}
			if o.within < 0 {
				return cli.Usage("--within %s must not be negative", o.within)
			}
			kt, err := pki.ParseKeyType(o.keyType)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			format, err := report.ParseFormat(o.output, report.Table, report.JSON)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			opts := rotate.Options{KeyType: kt, IntermediateDays: o.intermediateDays,
				ReloadTimeout: o.reloadTimeout, RolloutTimeout: o.rolloutTimeout, VerifyTimeout: o.verifyTimeout, Now: env.Now}
			clusters, err := newCA(env, o.root, o.caDir, &opts)
			if err != nil {
				return err
			}
			if !o.yes && !confirm(env.Streams.In, env.Streams.ErrOut, "recover restarts istiod, every ztunnel and every envoy; proceed?") {
				return cli.Exit(cli.ExitFailure, errors.New("aborted: nothing was changed"))
			}
			var obs rotate.Observer = &textObserver{w: env.Streams.ErrOut}
			if format == report.JSON {
				obs = &jsonObserver{enc: json.NewEncoder(env.Streams.Out)}
			}
			opts.Observer = obs
			recs, runErr := rotate.New(clusters, opts).Recover(cmd.Context(), rotate.RecoverOptions{Within: o.within, Force: o.force})
			if format == report.JSON {
				if err := report.Encode(env.Streams.Out, format, map[string]any{"recoveries": recs}); err != nil {
					return err
				}
			} else {
				printRecoveries(env.Streams.Out, recs)
			}
			return runErr
		},
	}
	multiContext(cmd)
	f := cmd.Flags()
	f.StringVar(&o.root, "root", "", "directory of the new root (root-cert.pem, root-key.pem); meshca issues each cluster's intermediate under it and keeps it in DIR/<cluster>/")
	f.StringVar(&o.caDir, "ca-dir", "", "bring your own: a bundle directory (ca-cert, ca-key, cert-chain, root-cert); with several clusters, DIR/<context>/ per cluster")
	f.DurationVar(&o.within, "within", 0, "also recover a CA that expires within this long (0: only an expired one)")
	f.BoolVar(&o.force, "force", false, "recover even a healthy CA (restarts everything; meshca rotate is the zero-downtime way)")
	f.BoolVar(&o.yes, "yes", false, "do not ask for confirmation")
	f.StringVar(&o.keyType, "key-type", string(pki.RSA4096), "key type of the intermediates meshca issues")
	f.IntVar(&o.intermediateDays, "intermediate-days", pki.DefaultIntermediateDays, "validity of the intermediates meshca issues (clamped to the root's)")
	f.DurationVar(&o.reloadTimeout, "reload-timeout", 3*time.Minute, "how long to wait for the restarted istiod to serve from the new CA")
	f.DurationVar(&o.rolloutTimeout, "rollout-timeout", 10*time.Minute, "timeout of each rollout")
	f.DurationVar(&o.verifyTimeout, "verify-timeout", 0, "how long the fleet may take to hold the new CA after the restarts (default 5m)")
	f.StringVarP(&o.output, "output", "o", "table", "table (progress on stderr, summary on stdout) or json (events as JSON lines, then the recoveries)")
	return cmd
}

// printRecoveries renders what recover did, per cluster.
func printRecoveries(w io.Writer, recs []rotate.Recovery) {
	for _, r := range recs {
		_, _ = fmt.Fprintf(w, "cluster %s: recovered to root %.12s, intermediate %.12s (expired cacerts kept in secret %s)\n", r.Cluster, r.NewRoot, r.NewSigner, r.BackupSecret)
		if len(r.Expired) > 0 {
			_, _ = fmt.Fprintf(w, "  expired: %s\n", strings.Join(r.Expired, "; "))
		}
		_, _ = fmt.Fprintf(w, "  cacerts written after %.1fs, istiod serving from the new CA after %.1fs, every proxy proven after %.1fs\n", r.Written, r.IstiodServing, r.Proven)
		_, _ = fmt.Fprintf(w, "  downtime: mTLS between two proxies failed from the expiry until both held the new CA; at most %.1fs after recover started for the last proxy\n", r.Proven)
	}
}
