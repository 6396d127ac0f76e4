package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// KwokNodeAnnotation marks the nodes kwok manages (value "fake"); AddNodes
// sets it.
const KwokNodeAnnotation = "kwok.x-k8s.io/node"

// NodeTypeLabel and NodeTypeKwok label every node AddNodes creates
// (type=kwok), so workloads can select or avoid fake nodes.
const (
	NodeTypeLabel = "type"
	NodeTypeKwok  = "kwok"
)

// portForwardResource is kwok's namespaced PortForward (kwok v0.8.0,
// kwok.x-k8s.io/v1alpha1): spec.forwards[] of {ports []int32, target
// {address, port}} for the pod of the same name and namespace.
var portForwardResource = schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: "portforwards"}

// AddNodes creates n kwok nodes named <prefix>-0 ... <prefix>-(n-1) (existing
// ones are kept) and waits until every one is Ready and carries no taint,
// i.e. until the node-lifecycle controller has removed the not-ready taint
// and pods, DaemonSet pods included, can be scheduled on it.
func (c *Cluster) AddNodes(ctx context.Context, n int, prefix string) error {
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name: names[i],
				Annotations: map[string]string{
					KwokNodeAnnotation:             "fake",
					"node.alpha.kubernetes.io/ttl": "0",
				},
				Labels: map[string]string{
					NodeTypeLabel:                      NodeTypeKwok,
					"kubernetes.io/hostname":           names[i],
					"kubernetes.io/os":                 "linux",
					"kubernetes.io/arch":               "amd64",
					"kubernetes.io/role":               "agent",
					"node-role.kubernetes.io/agent":    "",
					"topology.kubernetes.io/zone":      "sandbox",
					"topology.kubernetes.io/region":    "sandbox",
					"node.kubernetes.io/instance-type": "kwok",
				},
			},
		}
		if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", names[i], err)
		}
	}
	for _, name := range names {
		var last string
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, c.cfg.StartTimeout, true, func(ctx context.Context) (bool, error) {
			node, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
				return false, nil
			}
			ready := slices.ContainsFunc(node.Status.Conditions, func(c corev1.NodeCondition) bool {
				return c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
			})
			last = fmt.Sprintf("ready=%v taints=%v", ready, node.Spec.Taints)
			return ready && len(node.Spec.Taints) == 0, nil
		})
		if err != nil {
			return fmt.Errorf("wait for node %s to be ready and untainted: %w (last: %s)\n%s", name, err, last,
				formatTail(c.LogPath(Kwok)))
		}
	}
	return nil
}

// ForwardPort makes port-forwards to port podPort of pod ns/pod reach
// 127.0.0.1:localTargetPort on this machine, by creating or updating kwok's
// PortForward object of the same name and namespace as the pod. Other ports
// of an existing object are kept. kwok picks the change up through a watch
// within milliseconds, but asynchronously: a port-forward opened at once may
// still fail with "no forward found", so the first connection should be
// retried.
func (c *Cluster) ForwardPort(ctx context.Context, ns, pod string, podPort, localTargetPort int) error {
	forward := map[string]any{
		"ports":  []any{int64(podPort)},
		"target": map[string]any{"address": "127.0.0.1", "port": int64(localTargetPort)},
	}
	res := c.dynamic.Resource(portForwardResource).Namespace(ns)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		existing, err := res.Get(ctx, pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": portForwardResource.GroupVersion().String(),
				"kind":       "PortForward",
				"metadata":   map[string]any{"name": pod, "namespace": ns},
				"spec":       map[string]any{"forwards": []any{forward}},
			}}
			_, err = res.Create(ctx, obj, metav1.CreateOptions{FieldManager: fieldManager})
			return err
		}
		if err != nil {
			return err
		}
		old, _, _ := unstructured.NestedSlice(existing.Object, "spec", "forwards")
		forwards := []any{forward}
		for _, f := range old {
			if !forwardsPort(f, podPort) {
				forwards = append(forwards, f)
			}
		}
		if err := unstructured.SetNestedSlice(existing.Object, forwards, "spec", "forwards"); err != nil {
			return err
		}
		_, err = res.Update(ctx, existing, metav1.UpdateOptions{FieldManager: fieldManager})
		return err
	})
	if err != nil {
		return fmt.Errorf("set PortForward %s/%s port %d -> 127.0.0.1:%d: %w", ns, pod, podPort, localTargetPort, err)
	}
	return nil
}

// forwardsPort reports whether a spec.forwards entry lists port.
func forwardsPort(f any, port int) bool {
	m, ok := f.(map[string]any)
	if !ok {
		return false
	}
	ports, _, _ := unstructured.NestedSlice(m, "ports")
	for _, p := range ports {
		switch v := p.(type) {
		case int64:
			if v == int64(port) {
				return true
			}
		case float64:
			if v == float64(port) {
				return true
			}
		}
	}
	return false
}

// DeletePortForward removes the PortForward object of pod ns/pod, if any.
func (c *Cluster) DeletePortForward(ctx context.Context, ns, pod string) error {
	err := c.dynamic.Resource(portForwardResource).Namespace(ns).Delete(ctx, pod, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete PortForward %s/%s: %w", ns, pod, err)
	}
	return nil
}
