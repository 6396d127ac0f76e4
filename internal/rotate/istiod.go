package rotate

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/rollout"
)

// waitIstiod waits until istiod has loaded want, restarting it if it does not
// within ReloadTimeout, and records when it did.
func (e *Engine) waitIstiod(ctx context.Context, st *state, want *bundle.Bundle, p Phase) error {
	t0 := e.opts.Now()
	e.emit(Event{Kind: EventIstiodWaiting, Cluster: st.c.Name, Phase: p,
		Detail: fmt.Sprintf("phase %s: waiting for istiod to load the bundle (istio-ca-root-cert in every namespace, every replica serving from the phase's signer)", p)})
	wp, err := want.Parse()
	if err != nil {
		return err
	}
	loaded := func() error {
		if err := e.waitRootConfigMaps(ctx, st, want.RootCert, e.opts.ReloadTimeout); err != nil {
			return err
		}
		return e.waitReplicas(ctx, st, wp.Signer, e.opts.ReloadTimeout)
	}
	if err := loaded(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.emit(Event{Kind: EventNote, Cluster: st.c.Name, Phase: p, Detail: fmt.Sprintf("phase %s: istiod did not hot-reload (%v); restarting it", p, err)})
		if err := e.restartIstiod(ctx, st, p, ReasonIstiodReload); err != nil {
			return err
		}
		if err := loaded(); err != nil {
			return err
		}
	}
	if st.record.reloaded(p) == nil {
		st.record.markReloaded(p, e.opts.Now())
		if err := st.s.writeRecord(ctx, st.record); err != nil {
			return err
		}
	}
	d := e.opts.Now().Sub(t0)
	e.emit(Event{Kind: EventIstiodReloaded, Cluster: st.c.Name, Phase: p, Duration: d.Seconds(),
		Detail: fmt.Sprintf("phase %s: istiod loaded the bundle (%s)", p, d.Round(100*time.Millisecond))})
	return nil
}

func (e *Engine) waitRootConfigMaps(ctx context.Context, st *state, want []byte, timeout time.Duration) error {
	var lag string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		cms, err := mesh.ReadRootConfigMaps(ctx, st.c.Client)
		if err != nil {
			lag = err.Error()
			return false, nil
		}
		if len(cms) == 0 {
			lag = "no istio-ca-root-cert ConfigMap"
			return false, nil
		}
		for _, cm := range cms {
			if !bytes.Equal([]byte(cm.Data), want) {
				lag = "namespace " + cm.Namespace + " still has the previous bytes"
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("istio-ca-root-cert not updated after %s: %s", timeout, lag)
	}
	return nil
}

// restartIstiod restarts every istiod Deployment of the Istio namespace.
func (e *Engine) restartIstiod(ctx context.Context, st *state, p Phase, reason string) error {
	ds, err := mesh.FindIstiods(ctx, st.c.Client, st.c.Namespace)
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		return fmt.Errorf("no istiod Deployment (label app=istiod) in namespace %s to restart", st.c.Namespace)
	}
	var refs []rollout.Ref
	for _, d := range ds {
		refs = append(refs, rollout.Ref{Kind: rollout.KindDeployment, Namespace: d.Namespace, Name: d.Name})
	}
	return e.restart(ctx, st, p, reason, refs...)
}

// retireGates checks, before the old root is retired, the trust surfaces
// that are not proxies: the caBundle of istiod's injection and validation
// webhooks must hold the new root (istiod patches them at every reload; the
// API server calls the webhooks with that trust, so a lagging caBundle
// would fail every pod creation once istiod serves under the new root
// alone), and so must every other webhook configuration that trusts an old
// root (one installed or kept by another tool, with a caBundle istiod never
// touches). The API server reuses its webhook connections, so such a
// webhook may even keep working for a while after the retire, and fail at
// the next reconnect: only its caBundle tells.
func (e *Engine) retireGates(ctx context.Context, st *state) error {
	newRoot := st.record.NewRoot
	if st.c.Istiods != nil {
		// Every istiod replica must serve from the new intermediate: one
		// that still serves from the old signer would have its certificate
		// rejected by every proxy once the old root is gone.
		p, err := st.cur.Parse()
		if err != nil {
			return err
		}
		reps, err := st.c.Istiods.Replicas(ctx)
		if err != nil {
			return err
		}
		if lag := replicasLag(reps, p.Signer); lag != "" {
			return fmt.Errorf("refusing to retire the old root: istiod %s in namespace %s has not loaded the new intermediate %.12s, and proxies would reject its certificate once the old root is gone; delete that pod so that its Deployment recreates it with the current cacerts (kubectl -n %s delete pod <name>), then run meshca rotate again",
				lag, st.c.Namespace, st.record.NewSigner, st.c.Namespace)
		}
	}
	hooks, err := mesh.Webhooks(ctx, st.c.Client)
	if err != nil {
		return err
	}
	for _, h := range hooks {
		trust := h.Trust()
		if trust.Has(newRoot) {
			continue
		}
		if h.Istiod {
			return fmt.Errorf("refusing to retire the old root: %s has a caBundle without the new root %.12s, so the API server would reject istiod's webhook certificate once the old root is gone; istiod patches it at every cacerts reload: check istiod's logs, restart it (kubectl -n %s rollout restart deployment/istiod), then run meshca rotate again",
				h, newRoot, st.c.Namespace)
		}
		for _, old := range st.record.OldRoots {
			if trust.Has(old) {
				return fmt.Errorf("refusing to retire the old root: %s trusts the old root %.12s and not the new root %.12s: it calls a server certified by the mesh CA (istiod), but istiod does not patch it, so once the old root is gone the API server would reject that server's certificate and fail every request the webhook matches; add the new root to its caBundle (root-cert.pem of configmap %s/istio-ca-root-cert holds both roots now) where it is managed, then run meshca rotate again",
					h, old, newRoot, st.c.Namespace)
			}
		}
	}
	return nil
}
