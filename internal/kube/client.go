// Package kube is meshca's access to a Kubernetes cluster: a client built
// from the global kube flags (cli-runtime ConfigFlags: --kubeconfig,
// --context, -n), pod lookups, and a fetcher that reads an HTTP path of a
// pod's admin port through client-go's port-forward (websocket with SPDY
// fallback), which is how ztunnel's and envoy's localhost-only admin APIs
// (port 15000, facts §3 and §4) are reached.
package kube

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Client is a connection to one cluster.
type Client struct {
	// Config is the REST config the clientset and port-forwards use.
	Config *rest.Config
	// Clientset is the typed client.
	Clientset kubernetes.Interface
	// Namespace is the namespace of -n, or else of the kubeconfig context
	// ("default" when neither sets one).
	Namespace string
	// NamespaceExplicit is true when -n set Namespace.
	NamespaceExplicit bool
}

// Client-side rate limits. A fleet walk issues a request or two per pod in
// parallel; client-go's defaults (5 QPS) would serialise it.
const (
	defaultQPS   = 100
	defaultBurst = 200
)

// NewClient builds a Client from the global kube flags.
func NewClient(flags *genericclioptions.ConfigFlags) (*Client, error) {
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w (set --kubeconfig or KUBECONFIG)", err)
	}
	ns, explicit, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig namespace: %w", err)
	}
	if flags.Namespace != nil && *flags.Namespace != "" {
		explicit = true
	}
	LogRequests(cfg)
	slog.Debug("kubernetes client", "server", cfg.Host, "namespace", ns)
	return NewClientFromConfig(cfg, ns, explicit)
}

// NewClientFromConfig builds a Client from a REST config, for callers that
// already have one (the sandbox, tests).
func NewClientFromConfig(cfg *rest.Config, namespace string, explicit bool) (*Client, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		cfg.QPS = defaultQPS
	}
	if cfg.Burst == 0 {
		cfg.Burst = defaultBurst
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	return &Client{Config: cfg, Clientset: cs, Namespace: namespace, NamespaceExplicit: explicit}, nil
}

// PodOnNode finds the one pod matching selector (a label selector such as
// "app=ztunnel") scheduled on node, in any namespace.
func PodOnNode(ctx context.Context, cs kubernetes.Interface, selector, node string) (*corev1.Pod, error) {
	list, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		LabelSelector: selector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("list pods %q on node %s: %w", selector, node, err)
	}
	var found []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		// Filter again: not every API (nor the fake clientset) applies
		// field selectors.
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		if _, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("node %s not found", node)
		}
		return nil, fmt.Errorf("no pod %q on node %s", selector, node)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%d pods %q on node %s (%s/%s, %s/%s, ...): name one", len(found), selector, node,
		found[0].Namespace, found[0].Name, found[1].Namespace, found[1].Name)
}
