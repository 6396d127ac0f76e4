package mesh

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Labels, annotations and names that tell the kinds of proxies apart.
const (
	// ProxyContainer is the container name of envoy + istio-agent in
	// sidecars, gateways and waypoints.
	ProxyContainer = "istio-proxy"
	// LabelIstio is the label of the classic gateways
	// (istio=ingressgateway, istio=egressgateway).
	LabelIstio = "istio"
	// LabelManaged is set by istiod's gateway controllers on the pods they
	// deploy.
	LabelManaged = "gateway.istio.io/managed"
	// ManagedWaypoint is LabelManaged's value on waypoints.
	ManagedWaypoint = "istio.io-mesh-controller"
	// ManagedGateway is LabelManaged's value on Gateway API gateways.
	ManagedGateway = "istio.io-gateway-controller"
	// AnnotationSidecarStatus is written by the sidecar injector.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
)

// listPageSize bounds each List call: a big cluster's pods are read page by
// page, never all at once.
const listPageSize = 500

// FindProxies lists every pod of the data plane in every namespace and
// classifies it (see Classify). Pods that have finished (Succeeded or
// Failed, e.g. a completed Job with a sidecar) hold nothing and never will,
// so they are left out; the returned warnings count them. Each proxy's owner
// is resolved through its ReplicaSet to the Deployment. The result is sorted
// by kind, namespace and name.
func FindProxies(ctx context.Context, cs kubernetes.Interface) ([]Proxy, []string, error) {
	var (
		proxies  []Proxy
		finished int
		// replicaSets owning proxies, namespace/name, to resolve.
		replicaSets = map[string]bool{}
	)
	opts := metav1.ListOptions{Limit: listPageSize}
	for {
		list, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("list pods in all namespaces: %w", err)
		}
		for i := range list.Items {
			pod := &list.Items[i]
			kind, ok := Classify(pod)
			if !ok {
				continue
			}
			if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
				finished++
				continue
			}
			p := proxyOf(pod, kind)
			if p.Owner.Kind == "ReplicaSet" {
				replicaSets[p.Namespace+"/"+p.Owner.Name] = true
			}
			proxies = append(proxies, p)
		}
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	var warnings []string
	if finished > 0 {
		warnings = append(warnings, fmt.Sprintf("skipped %d finished proxy pods (Succeeded or Failed): they hold no certificates", finished))
	}
	if len(replicaSets) > 0 {
		owners, err := replicaSetOwners(ctx, cs, replicaSets)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("owners of proxy pods shown as ReplicaSets: %v", err))
		}
		for i := range proxies {
			p := &proxies[i]
			if o, ok := owners[p.Namespace+"/"+p.Owner.Name]; ok && p.Owner.Kind == "ReplicaSet" {
				p.Owner = o
			}
		}
	}
	SortProxies(proxies)
	return proxies, warnings, nil
}

// SortProxies sorts by kind (Kinds order), namespace and name.
func SortProxies(proxies []Proxy) {
	slices.SortFunc(proxies, func(a, b Proxy) int {
		return cmp.Or(cmp.Compare(a.Kind.Order(), b.Kind.Order()), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}

// Classify tells which kind of proxy a pod is, if any:
//   - ztunnel: label app=ztunnel;
//   - waypoint: label gateway.istio.io/managed=istio.io-mesh-controller;
//   - gateway: label istio=ingressgateway or istio=egressgateway, or
//     gateway.istio.io/managed=istio.io-gateway-controller;
//   - sidecar: any other pod with a container (or native sidecar init
//     container) named istio-proxy.
func Classify(pod *corev1.Pod) (Kind, bool) {
	l := pod.Labels
	switch {
	case l[LabelApp] == ZtunnelApp:
		return KindZtunnel, true
	case l[LabelManaged] == ManagedWaypoint:
		return KindWaypoint, true
	case l[LabelIstio] == "ingressgateway", l[LabelIstio] == "egressgateway", l[LabelManaged] == ManagedGateway:
		return KindGateway, true
	case proxyContainer(pod) != nil:
		return KindSidecar, true
	}
	return "", false
}

// proxyContainer is the istio-proxy container of a pod: a regular container,
// or an init container with restartPolicy Always (native sidecar mode).
func proxyContainer(pod *corev1.Pod) *corev1.Container {
	if c := container(pod.Spec.Containers, ProxyContainer); c != nil {
		return c
	}
	return container(pod.Spec.InitContainers, ProxyContainer)
}

func proxyOf(pod *corev1.Pod, kind Kind) Proxy {
	p := Proxy{
		Kind:      kind,
		Namespace: pod.Namespace,
		Name:      pod.Name,
		Node:      pod.Spec.NodeName,
		Created:   pod.CreationTimestamp.UTC(),
		Revision:  pod.Labels[LabelRevision],
	}
	_, p.Injected = pod.Annotations[AnnotationSidecarStatus]
	if kind.Envoy() {
		if c := proxyContainer(pod); c != nil {
			p.XDSAgent = parseBool(envValue(c, EnvXDSAgent))
		}
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		p.Owner = Owner{Kind: ref.Kind, Name: ref.Name}
	}
	p.Ready, p.NotReady = readiness(pod)
	return p
}

// readiness: only a Running pod that is not being deleted is read (its admin
// port can answer); anything else is reported as not ready, with why.
func readiness(pod *corev1.Pod) (bool, string) {
	if pod.DeletionTimestamp != nil {
		return false, "terminating"
	}
	if pod.Status.Phase == corev1.PodRunning {
		return true, ""
	}
	phase := string(pod.Status.Phase)
	if phase == "" {
		phase = "Unknown"
	}
	var why []string
	if pod.Status.Reason != "" {
		why = append(why, pod.Status.Reason)
	}
	if pod.Spec.NodeName == "" {
		why = append(why, "not scheduled")
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == ProxyContainer && s.State.Waiting != nil && s.State.Waiting.Reason != "" {
			why = append(why, ProxyContainer+" "+s.State.Waiting.Reason)
		}
	}
	if len(why) > 0 {
		return false, phase + " (" + strings.Join(why, ", ") + ")"
	}
	return false, phase
}

// replicaSetOwners maps namespace/name of the wanted ReplicaSets to their
// controller (a Deployment). ReplicaSets are listed page by page across the
// cluster rather than fetched one by one: a mesh has far fewer pages than
// ReplicaSets. On an API error the ReplicaSets stay as they are.
func replicaSetOwners(ctx context.Context, cs kubernetes.Interface, want map[string]bool) (map[string]Owner, error) {
	owners := make(map[string]Owner, len(want))
	opts := metav1.ListOptions{Limit: listPageSize}
	for {
		list, err := cs.AppsV1().ReplicaSets(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return owners, fmt.Errorf("list replicasets in all namespaces: %w", err)
		}
		for i := range list.Items {
			rs := &list.Items[i]
			key := rs.Namespace + "/" + rs.Name
			if !want[key] {
				continue
			}
			if ref := metav1.GetControllerOf(rs); ref != nil {
				owners[key] = Owner{Kind: ref.Kind, Name: ref.Name}
			}
		}
		if list.Continue == "" {
			return owners, nil
		}
		opts.Continue = list.Continue
	}
}
