package rotate

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// IstiodPort is istiod's secure gRPC port (CA and xDS): the certificate it
// serves there is the one istiod regenerates with the current signer at
// every cacerts reload.
const IstiodPort = 15012

// Replica is what one istiod pod serves on IstiodPort.
type Replica struct {
	// Pod is the istiod pod's name.
	Pod string
	// Chain is the served chain, leaf first; nil when Err is set.
	Chain []*x509.Certificate
	Err   error
}

// IstiodReader asks every running istiod replica which chain it serves.
type IstiodReader interface {
	Replicas(ctx context.Context) ([]Replica, error)
}

// liveIstiods reads the replicas through port-forwards.
type liveIstiods struct {
	fetcher   *kube.Fetcher
	client    *kube.Client
	namespace string
}

func (l liveIstiods) Replicas(ctx context.Context) ([]Replica, error) {
	pods, err := l.client.Clientset.CoreV1().Pods(l.namespace).List(ctx, metav1.ListOptions{LabelSelector: mesh.LabelApp + "=" + mesh.IstiodApp})
	if err != nil {
		return nil, fmt.Errorf("list istiod pods in namespace %s: %w", l.namespace, err)
	}
	var out []Replica
	for i := range pods.Items {
		p := &pods.Items[i]
		// Every running replica, ready or not: one that is not ready now may
		// serve again later, and must have loaded the bundle too.
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		chain, err := l.fetcher.ServingChain(ctx, p.Namespace, p.Name, IstiodPort)
		out = append(out, Replica{Pod: p.Name, Chain: chain, Err: err})
	}
	return out, nil
}

// replicasLag names the istiod replicas whose serving certificate is not
// signed by signer ("" when every replica serves from it).
func replicasLag(reps []Replica, signer *x509.Certificate) string {
	var lag []string
	for _, r := range reps {
		switch {
		case r.Err != nil:
			lag = append(lag, fmt.Sprintf("pod %s (%v)", r.Pod, r.Err))
		case r.Chain[0].CheckSignatureFrom(signer) != nil:
			by := "an unknown signer"
			if len(r.Chain) > 1 {
				by = "intermediate " + pki.ShortFingerprint(r.Chain[1])
			}
			lag = append(lag, fmt.Sprintf("pod %s (serves a certificate from %s)", r.Pod, by))
		}
	}
	return strings.Join(lag, ", ")
}

// waitReplicas waits until every istiod replica serves a certificate from
// signer: each replica loads cacerts on its own, and the ConfigMaps show
// only that one of them (the leader) did.
func (e *Engine) waitReplicas(ctx context.Context, st *state, signer *x509.Certificate, timeout time.Duration) error {
	if st.c.Istiods == nil {
		return nil
	}
	var lag string
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		reps, err := st.c.Istiods.Replicas(ctx)
		if err != nil {
			return false, err
		}
		if len(reps) == 0 {
			lag = "no running istiod pod"
			return false, nil
		}
		lag = replicasLag(reps, signer)
		return lag == "", nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("istiod replicas in namespace %s have not loaded the bundle signed by %s after %s: %s", st.c.Namespace, pki.ShortFingerprint(signer), timeout, lag)
	}
	return nil
}
