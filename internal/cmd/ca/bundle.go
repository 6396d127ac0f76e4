package ca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
)

type bundleOptions struct {
	phase, current, next, out string
	force                     bool
}

func newBundleCmd(env *cli.Env) *cobra.Command {
	o := &bundleOptions{}
	cmd := &cobra.Command{
		Use:   "bundle --phase trust|issue|retire --current DIR --new DIR --out DIR",
		Short: "Build the cacerts bundle of a rotation phase",
		Long: `Build the cacerts bundle of one phase of the three-phase rotation from the
bundle in use now (--current: a cacerts export or a Makefile cluster directory)
and the new CA (--new: a cluster directory from 'meshca ca intermediate'; for
the trust phase a directory with only root-cert.pem is enough).

  trust   current signer unchanged; root-cert.pem = the exact current bytes
          followed by the new root(s) not already in it
  issue   new signer (ca-cert, ca-key, cert-chain); root-cert.pem = the trust
          bytes plus the new root once more, a byte superset that differs, so
          istiod 1.28 hot-reloads it and PCDS makes envoys re-sign
  retire  new signer; root-cert.pem = the new root only, cut from the current
          bytes so that the containment rule holds

Every bundle is validated as istiod validates at load, and the change from
--current is checked against istiod 1.28's hot-reload rule (a changed
root-cert.pem must contain the old bytes or be contained in them). A bundle
that istiod would reject or ignore is never written. Each output can be the
--current of the next phase: current -> trust -> issue -> retire.`,
		Example: `  meshca ca bundle --phase trust  --current ./export --new ./ca/east --out ./phase1
  meshca ca bundle --phase issue  --current ./phase1 --new ./ca/east --out ./phase2
  meshca ca bundle --phase retire --current ./phase2 --new ./ca/east --out ./phase3`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			phase, err := bundle.ParsePhase(o.phase)
			if err != nil {
				return cli.Exit(cli.ExitUsage, err)
			}
			if o.current == "" || o.next == "" || o.out == "" {
				return cli.Usage("--current, --new and --out are required")
			}
			cur, err := bundle.Load(o.current)
			if err != nil {
				return err
			}
			next, err := loadNew(o.next, phase)
			if err != nil {
				return err
			}
			now := env.Now()
			out, err := bundle.Build(phase, cur, next, now)
			if err != nil {
				return err
			}
			reload, err := bundle.Transition(cur, out, true)
			if err != nil {
				return err
			}
			if err := out.Write(o.out, o.force); err != nil {
				return err
			}
			roots, err := out.ParseRoots()
			if err != nil {
				return err
			}
			p, err := out.Parse()
			if err != nil {
				return err
			}
			w := env.Streams.Out
			_, _ = fmt.Fprintf(w, "phase %s bundle written to %s\n", phase, o.out)
			_, _ = fmt.Fprintf(w, "  signer         %s (%s)\n", p.Signer.Subject.CommonName, pki.ShortFingerprint(p.Signer))
			unique, dups := pki.Unique(roots)
			_, _ = fmt.Fprintf(w, "  root-cert.pem  %d block(s), %d distinct root(s)\n", len(roots), len(unique))
			for _, r := range unique {
				_, _ = fmt.Fprintf(w, "                 - %s (%s)\n", r.Subject.CommonName, pki.ShortFingerprint(r))
			}
			if dups > 0 {
				_, _ = fmt.Fprintf(w, "                 (%d repeated on purpose: the bytes must grow for istiod and PCDS to see a change)\n", dups)
			}
			_, err = fmt.Fprintf(w, "  istiod reload  %s\n", describeReload(reload))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.phase, "phase", "", "trust, issue or retire")
	f.StringVar(&o.current, "current", "", "the bundle in use now (four files)")
	f.StringVar(&o.next, "new", "", "the new CA's cluster directory")
	f.StringVar(&o.out, "out", "", "directory to write the phase bundle into")
	f.BoolVar(&o.force, "force", false, "overwrite an existing ca-key.pem in --out")
	return cmd
}

// loadNew reads --new: a whole bundle, or for the trust phase possibly just
// a root directory.
func loadNew(dir string, phase bundle.Phase) (*bundle.Bundle, error) {
	b, err := bundle.Load(dir)
	if err == nil || phase != bundle.PhaseTrust {
		return b, err
	}
	data, rerr := pki.ReadFile(filepath.Join(dir, bundle.RootCertFile))
	if rerr != nil {
		if errors.Is(rerr, fs.ErrNotExist) {
			return nil, err
		}
		return nil, rerr
	}
	if _, serr := os.Stat(dir); serr != nil {
		return nil, serr
	}
	return &bundle.Bundle{RootCert: data, Source: dir}, nil
}

func describeReload(r bundle.Reload) string {
	switch r {
	case bundle.ReloadNone:
		return "nothing changes (this phase is already in place)"
	case bundle.ReloadSigner:
		return "hot reload of the signing CA (same roots)"
	default:
		return "hot reload of new roots (needs ISTIO_MULTIROOT_MESH=true; the byte-containment rule holds)"
	}
}
