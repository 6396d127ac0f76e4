// Package rollout owns restarting workloads and waiting for their rollouts,
// as `kubectl rollout restart` and `kubectl rollout status` do: Restart sets
// the kubectl.kubernetes.io/restartedAt annotation on a Deployment's,
// DaemonSet's or StatefulSet's pod template, Wait watches the object until
// kubectl's rollout-status logic (k8s.io/kubectl polymorphichelpers) reports
// the rollout done, and RestartAndWait does both for a list of workloads in
// order. Owner finds the workload that owns a pod, so that the rotation engine
// can restart the owners of lagging proxies.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// RestartedAtAnnotation is the pod-template annotation `kubectl rollout
// restart` sets; changing it makes the controller replace every pod.
const RestartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// The workload kinds Restart and Wait support, as Ref.Kind spells them.
const (
	KindDeployment  = "Deployment"
	KindDaemonSet   = "DaemonSet"
	KindStatefulSet = "StatefulSet"
)

// ErrNotRestartable is wrapped by the errors of Owner for a pod that no
// Deployment, DaemonSet or StatefulSet controls (a bare pod, a Job's pod,
// a ReplicaSet without a Deployment), and by Restart and Wait for an
// unsupported kind.
var ErrNotRestartable = errors.New("not restartable")

// Ref names a workload: Kind is KindDeployment, KindDaemonSet or
// KindStatefulSet (matched case-insensitively).
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

// String returns the workload as kind/namespace/name with the kind in lower
// case, e.g. "daemonset/istio-system/ztunnel".
func (r Ref) String() string {
	return strings.ToLower(r.Kind) + "/" + r.Namespace + "/" + r.Name
}

// kind returns the canonical spelling of r.Kind, or an error naming r.
func (r Ref) kind() (string, error) {
	for _, k := range []string{KindDeployment, KindDaemonSet, KindStatefulSet} {
		if strings.EqualFold(r.Kind, k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("%s: kind %q: %w (want Deployment, DaemonSet or StatefulSet)", r, r.Kind, ErrNotRestartable)
}

// Options tune Wait and RestartAndWait. The zero value waits without a
// timeout of its own (only ctx bounds it), reports no progress and uses
// time.Now.
type Options struct {
	// Timeout bounds each Wait (in RestartAndWait: each workload's wait);
	// zero means no timeout beyond ctx. When it expires, Wait returns a
	// *TimeoutError carrying the last status message.
	Timeout time.Duration
	// Progress, if set, receives each new kubectl rollout-status message
	// (e.g. `Waiting for daemon set "ztunnel" rollout to finish: 1 of 3
	// updated pods are available...`), without the trailing newline.
	// Repeated identical messages are reported once. It is called from the
	// goroutine that called Wait, before Wait returns.
	Progress func(string)
	// Now is the clock RestartAndWait stamps restarts with; nil means
	// time.Now.
	Now func() time.Time
	// HealthInterval is the pause between API server health checks during a
	// Wait (kube.MonitorAPI); zero means its default, negative disables them.
	HealthInterval time.Duration
}

// Restart does what `kubectl rollout restart` does: it sets the pod template
// annotation kubectl.kubernetes.io/restartedAt to now (RFC 3339) with a
// strategic merge patch, so the workload's controller replaces its pods.
// Other template annotations are kept. A paused Deployment is refused (it
// would never roll out). If the annotation already holds now to the second
// (a second restart within the same second, which would be a no-op patch
// and replace no pod), the value carries fractional seconds so the restart
// still takes effect; if even that is unchanged (now on a whole second, and
// already restarted at exactly now), Restart fails. Errors name ref.
func Restart(ctx context.Context, client kubernetes.Interface, ref Ref, now time.Time) error {
	kind, err := ref.kind()
	if err != nil {
		return err
	}
	obj, err := get(ctx, client, ref, kind)
	if err != nil {
		return fmt.Errorf("restart %s: %w", ref, err)
	}
	if d, ok := obj.(*appsv1.Deployment); ok && d.Spec.Paused {
		return fmt.Errorf("restart %s: deployment is paused; resume it first (kubectl rollout resume -n %s deployment/%s)", ref, ref.Namespace, ref.Name)
	}
	stamp := now.Format(time.RFC3339)
	previous := templateAnnotations(obj)[RestartedAtAnnotation]
	if previous == stamp {
		stamp = now.Format(time.RFC3339Nano)
		if previous == stamp {
			return fmt.Errorf("restart %s: already restarted at %s", ref, stamp)
		}
	}
	patch, err := restartPatch(stamp)
	if err != nil {
		return fmt.Errorf("restart %s: %w", ref, err)
	}
	opts := metav1.PatchOptions{}
	switch kind {
	case KindDeployment:
		_, err = client.AppsV1().Deployments(ref.Namespace).Patch(ctx, ref.Name, types.StrategicMergePatchType, patch, opts)
	case KindDaemonSet:
		_, err = client.AppsV1().DaemonSets(ref.Namespace).Patch(ctx, ref.Name, types.StrategicMergePatchType, patch, opts)
	case KindStatefulSet:
		_, err = client.AppsV1().StatefulSets(ref.Namespace).Patch(ctx, ref.Name, types.StrategicMergePatchType, patch, opts)
	}
	if err != nil {
		return fmt.Errorf("restart %s: %w", ref, err)
	}
	return nil
}

// restartPatch returns the strategic merge patch that sets the restartedAt
// annotation of the pod template to stamp.
func restartPatch(stamp string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"spec": map[string]any{
			"template": map[string]any{
				"metadata": map[string]any{
					"annotations": map[string]string{RestartedAtAnnotation: stamp},
				},
			},
		},
	})
}

// RestartAndWait restarts each workload in order and waits for its rollout
// to complete before restarting the next, as the rotation engine needs
// (istiod, then ztunnel, then waypoints, gateways and sidecar workloads).
// opts.Timeout applies to each wait. It stops at the first error, which
// names the workload; the workloads after it are left untouched.
func RestartAndWait(ctx context.Context, client kubernetes.Interface, refs []Ref, opts Options) error {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	for _, ref := range refs {
		if err := Restart(ctx, client, ref, now()); err != nil {
			return err
		}
		if err := Wait(ctx, client, ref, opts); err != nil {
			return err
		}
	}
	return nil
}

// get reads the workload ref of the canonical kind.
func get(ctx context.Context, client kubernetes.Interface, ref Ref, kind string) (metav1.Object, error) {
	opts := metav1.GetOptions{}
	switch kind {
	case KindDeployment:
		return client.AppsV1().Deployments(ref.Namespace).Get(ctx, ref.Name, opts)
	case KindDaemonSet:
		return client.AppsV1().DaemonSets(ref.Namespace).Get(ctx, ref.Name, opts)
	case KindStatefulSet:
		return client.AppsV1().StatefulSets(ref.Namespace).Get(ctx, ref.Name, opts)
	}
	return nil, fmt.Errorf("kind %q: %w", kind, ErrNotRestartable)
}

// templateAnnotations returns the pod-template annotations of a workload.
func templateAnnotations(obj metav1.Object) map[string]string {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Template.Annotations
	case *appsv1.DaemonSet:
		return o.Spec.Template.Annotations
	case *appsv1.StatefulSet:
		return o.Spec.Template.Annotations
	}
	return nil
}
