package rotate

import (
	"context"
	"fmt"
	"io"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// Plan prints, without changing anything, every step a Run would take from
// where each cluster stands now and what each cacerts write would change.
// With no rotation in progress, the new intermediate shown is a throwaway
// one: Run issues the real one after taking the backup.
func (e *Engine) Plan(ctx context.Context, w io.Writer) error {
	e.started = e.opts.Now()
	for _, c := range e.clusters {
		st, err := e.load(ctx, c, false)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "cluster %s (namespace %s)\n", c.Name, c.Namespace)
		next := st.next
		phase := st.phase
		if st.record == nil {
			phase = PhaseNone
			fmt.Fprintf(w, "  1. copy secret %s to a backup Secret and verify it byte for byte\n", CACertsSecret)
			if next = c.CA; next == nil {
				if e.opts.Root == nil {
					return fmt.Errorf("cluster %s: no rotation in progress: give --root or --ca-dir", c.Name)
				}
				inter, err := pki.NewIntermediate(e.opts.Root, pki.IntermediateOptions{Cluster: c.ClusterName, KeyType: pki.ECDSAP256, IstioNamespace: c.Namespace, Now: e.opts.Now()})
				if err != nil {
					return err
				}
				if next, err = bundle.FromCA(e.opts.Root, inter); err != nil {
					return err
				}
				fmt.Fprintf(w, "  2. issue intermediate CA for %s under root %.12s, keep it in secret %s/%s\n", c.ClusterName, pki.Fingerprint(e.opts.Root.Cert), c.Namespace, NextSecret)
			}
		} else {
			fmt.Fprintf(w, "  rotation in progress: phase %s (backup %s)\n", phase, st.record.BackupSecret)
		}
		if e.opts.OneStep {
			fmt.Fprintf(w, "  one-step: write the new signer with root-cert.pem = new root + old root, restart istiod, ztunnel and every envoy workload (expect failed handshakes)\n")
			continue
		}
		cur := st.cur
		for _, p := range []Phase{PhaseTrust, PhaseIssue, PhaseRetire} {
			if phase.index() > p.index() {
				continue
			}
			want, err := bundle.Build(bundle.Phase(p), cur, next, e.opts.Now())
			if err != nil {
				return fmt.Errorf("cluster %s, phase %s: %w", c.Name, p, err)
			}
			reload, err := bundle.Transition(cur, want, true)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "  phase %s:\n", p)
			if want.Equal(cur) {
				fmt.Fprintf(w, "    - cacerts already holds this phase's bundle\n")
			} else {
				fmt.Fprintf(w, "    - write cacerts: %s\n", describeWrite(cur, want, reload))
			}
			if p == PhaseRetire {
				fmt.Fprintf(w, "    - refuse unless no proxy holds a certificate from the old CA\n")
			}
			fmt.Fprintf(w, "    - wait for istiod to hot-reload (istio-ca-root-cert in every namespace); restart istiod if it does not\n")
			fmt.Fprintf(w, "    - verify the fleet; if it lags: restart ztunnel, then envoy workloads without live PCDS; verify until every proxy matches\n")
			cur = want
			if string(p) == string(e.opts.Until) {
				break
			}
		}
	}
	return nil
}
