package rollout

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
)

// Owner returns the workload that owns pod, the one Restart must restart to
// replace it: the Deployment that controls the pod's ReplicaSet (read from
// the API server), or the DaemonSet or StatefulSet that controls the pod.
// Only controller owner references count. A pod that none of them controls
// (a bare pod, a Job's pod, a ReplicaSet without a Deployment) is an error
// wrapping ErrNotRestartable; every error names the pod.
func Owner(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) (Ref, error) {
	ctrl := metav1.GetControllerOf(pod)
	if ctrl == nil {
		return Ref{}, fmt.Errorf("owner of pod %s/%s: no controller: %w", pod.Namespace, pod.Name, ErrNotRestartable)
	}
	switch {
	case isApps(ctrl, "DaemonSet"):
		return Ref{Kind: KindDaemonSet, Namespace: pod.Namespace, Name: ctrl.Name}, nil
	case isApps(ctrl, "StatefulSet"):
		return Ref{Kind: KindStatefulSet, Namespace: pod.Namespace, Name: ctrl.Name}, nil
	case !isApps(ctrl, "ReplicaSet"):
		return Ref{}, fmt.Errorf("owner of pod %s/%s: controlled by %s %s: %w", pod.Namespace, pod.Name, ctrl.Kind, ctrl.Name, ErrNotRestartable)
	}
	rs, err := client.AppsV1().ReplicaSets(pod.Namespace).Get(ctx, ctrl.Name, metav1.GetOptions{})
	if err != nil {
		return Ref{}, fmt.Errorf("owner of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if rs.UID != ctrl.UID {
		return Ref{}, fmt.Errorf("owner of pod %s/%s: replicaset %s was replaced (uid %s, pod refers to %s)", pod.Namespace, pod.Name, rs.Name, rs.UID, ctrl.UID)
	}
	dep := metav1.GetControllerOf(rs)
	if dep == nil || !isApps(dep, "Deployment") {
		return Ref{}, fmt.Errorf("owner of pod %s/%s: replicaset %s is not controlled by a deployment: %w", pod.Namespace, pod.Name, rs.Name, ErrNotRestartable)
	}
	return Ref{Kind: KindDeployment, Namespace: pod.Namespace, Name: dep.Name}, nil
}

// isApps reports whether ref refers to kind in the apps API group.
func isApps(ref *metav1.OwnerReference, kind string) bool {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	return err == nil && gv.Group == appsv1.GroupName && ref.Kind == kind
}
