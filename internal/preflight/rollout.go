package preflight

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// Names of the checks about restarts and lifetimes.
const (
	CheckIstiodReplicas    = "istiod replicas"
	CheckZtunnelStrategy   = "ztunnel update strategy"
	CheckIntermediateTTL   = "intermediate outlives SECRET_TTL"
	envSecretTTL           = "SECRET_TTL"
	defaultSecretTTL       = 24 * time.Hour
	ztunnelStrategyPatchFn = `kubectl -n %s patch daemonset %s --type merge -p '{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}'`
)

// istiodReplicaCheck says how many istiod replicas there are: the rotation
// waits for every one of them to load each phase's bundle.
func istiodReplicaCheck(in *mesh.Install) []Check {
	var out []Check
	for _, d := range in.Istiods {
		if in.Namespace != "" && d.Namespace != in.Namespace {
			continue
		}
		c := Check{Name: CheckIstiodReplicas, Status: StatusOK,
			Message: fmt.Sprintf("deployment %s/%s: %d replica(s), %d ready; each loads cacerts on its own and every one must take each phase's bundle", d.Namespace, d.Name, d.Replicas, d.ReadyReplicas)}
		if d.ReadyReplicas > 0 && d.ReadyReplicas < d.Replicas {
			c.Status = StatusWarning
			c.Message += ": a replica that is not ready may serve an older bundle when it comes up"
			c.Hint = fmt.Sprintf("kubectl -n %s rollout status deployment/%s", d.Namespace, d.Name)
		}
		out = append(out, c)
	}
	return out
}

// ztunnelStrategyChecks reads each ztunnel DaemonSet's update strategy: a
// restart refuses no new connection only when a new pod starts on the node
// before the old one drains (maxSurge 1, maxUnavailable 0, the Istio
// chart's values). It also returns the longest SECRET_TTL of the ztunnels.
func ztunnelStrategyChecks(ctx context.Context, cs kubernetes.Interface, in *mesh.Install) ([]Check, time.Duration, error) {
	var out []Check
	ttl := time.Duration(0)
	for _, z := range in.Ztunnels {
		ds, err := cs.AppsV1().DaemonSets(z.Namespace).Get(ctx, z.Name, metav1.GetOptions{})
		if err != nil {
			return nil, 0, fmt.Errorf("read daemonset %s/%s: %w", z.Namespace, z.Name, err)
		}
		ttl = max(ttl, secretTTL(ds))
		out = append(out, strategyCheck(ds))
	}
	if ttl == 0 {
		ttl = defaultSecretTTL
	}
	return out, ttl, nil
}

func strategyCheck(ds *appsv1.DaemonSet) Check {
	name := ds.Namespace + "/" + ds.Name
	c := Check{Name: CheckZtunnelStrategy, Status: StatusOK}
	st := ds.Spec.UpdateStrategy
	if st.Type == appsv1.OnDeleteDaemonSetStrategyType {
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("daemonset %s uses OnDelete: a restart only takes effect when its pods are deleted, and each deleted pod refuses connections on its node until the new one runs", name)
		c.Hint = fmt.Sprintf(ztunnelStrategyPatchFn, ds.Namespace, ds.Name)
		return c
	}
	surge, unavailable := intstr.FromInt32(0), intstr.FromInt32(1) // the API server's defaults
	if ru := st.RollingUpdate; ru != nil {
		if ru.MaxSurge != nil {
			surge = *ru.MaxSurge
		}
		if ru.MaxUnavailable != nil {
			unavailable = *ru.MaxUnavailable
		}
	}
	if isZero(surge) || !isZero(unavailable) {
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("daemonset %s rolls with maxSurge %s, maxUnavailable %s: each ztunnel restart stops the old pod before the new one runs, refusing new connections on its node meanwhile", name, surge.String(), unavailable.String())
		c.Hint = fmt.Sprintf(ztunnelStrategyPatchFn, ds.Namespace, ds.Name) + "\n(the Istio chart's values; Helm: --set updateStrategy.rollingUpdate.maxSurge=1 --set updateStrategy.rollingUpdate.maxUnavailable=0)"
		return c
	}
	c.Message = fmt.Sprintf("daemonset %s rolls with maxSurge %s, maxUnavailable %s: the new ztunnel takes new connections while the old one drains (a restart still ends long-lived connections)", name, surge.String(), unavailable.String())
	return c
}

func isZero(v intstr.IntOrString) bool {
	if v.Type == intstr.String {
		return strings.TrimSuffix(v.StrVal, "%") == "0"
	}
	return v.IntVal == 0
}

// secretTTL is the SECRET_TTL of a ztunnel DaemonSet's containers, 0 when
// unset.
func secretTTL(ds *appsv1.DaemonSet) time.Duration {
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.Name != envSecretTTL {
				continue
			}
			if v, err := time.ParseDuration(e.Value); err == nil && v > 0 {
				return v
			}
		}
	}
	return 0
}

// intermediateTTLCheck compares the current intermediate's remaining
// lifetime with the workload certificate lifetime: a leaf issued now would
// outlive its signer (before 1.30 istiod does not clamp a leaf's NotAfter
// to the signer's, istio#18990, istio#59768), and the rotation itself must
// finish before the intermediate expires.
func intermediateTTLCheck(ca *mesh.CA, ttl time.Duration, now time.Time) Check {
	c := Check{Name: CheckIntermediateTTL, Status: StatusOK}
	name := fmt.Sprintf("intermediate %q (sha256 %s)", ca.Signer.Subject.CommonName, pki.ShortFingerprint(ca.Signer))
	left := ca.Signer.NotAfter.Sub(now)
	if left <= 0 {
		c.Status = StatusError
		c.Message = name + " has expired"
		c.Hint = "rotate to a new intermediate now: meshca rotate --ca-dir DIR (or --root DIR)"
		return c
	}
	c.Message = fmt.Sprintf("%s has %s left, more than the workload certificate lifetime (SECRET_TTL %s)", name, humanLeft(left), ttl)
	if left < ttl {
		c.Status = StatusWarning
		c.Message = fmt.Sprintf("%s has %s left, less than the workload certificate lifetime (SECRET_TTL %s): leaves issued now outlive their signer, and a gentle rotation (which waits up to SECRET_TTL per phase) would not finish in time", name, humanLeft(left), ttl)
		c.Hint = "rotate to a new intermediate now with --pace fast: meshca rotate --ca-dir DIR (or --root DIR)"
	}
	return c
}

// humanLeft renders a remaining lifetime: days beyond two days, else a
// duration in minutes.
func humanLeft(d time.Duration) string {
	if d > 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Minute).String()
}
