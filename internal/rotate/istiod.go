package rotate

import (
	"bytes"
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
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

// Names of the webhook configurations istiod patches with root-cert.pem.
const (
	injectorWebhook  = "istio-sidecar-injector"
	validatorWebhook = "istio-validator-" // + revision and namespace, e.g. istio-validator-istio-system
)

// retireGates checks, before the old root is retired, the trust surfaces
// that are not proxies: the caBundle of istiod's injection and validation
// webhooks must hold the new root (istiod patches them at every reload; the
// API server calls the webhooks with that trust, so a lagging caBundle
// would fail every pod creation once istiod serves under the new root
// alone).
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
	check := func(kind, name, hook string, caBundle []byte) error {
		certs, err := pki.ParseCertificates(kind+" "+name, caBundle)
		if err == nil {
			for _, c := range certs {
				if pki.Fingerprint(c) == newRoot {
					return nil
				}
			}
		}
		return fmt.Errorf("refusing to retire the old root: %s %s (webhook %s) has a caBundle without the new root %.12s, so the API server would reject istiod's webhook certificate once the old root is gone; istiod patches it at every cacerts reload: check istiod's logs, restart it (kubectl -n %s rollout restart deployment/istiod), then run meshca rotate again",
			kind, name, hook, newRoot, st.c.Namespace)
	}
	mw, err := st.c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, injectorWebhook, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("read mutatingwebhookconfiguration %s: %w", injectorWebhook, err)
	default:
		for _, w := range mw.Webhooks {
			if err := check("mutatingwebhookconfiguration", mw.Name, w.Name, w.ClientConfig.CABundle); err != nil {
				return err
			}
		}
	}
	vws, err := st.c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list validatingwebhookconfigurations: %w", err)
	}
	for _, vw := range vws.Items {
		if len(vw.Name) < len(validatorWebhook) || vw.Name[:len(validatorWebhook)] != validatorWebhook {
			continue
		}
		for _, w := range vw.Webhooks {
			if err := check("validatingwebhookconfiguration", vw.Name, w.Name, w.ClientConfig.CABundle); err != nil {
				return err
			}
		}
	}
	return nil
}
