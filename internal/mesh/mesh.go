// Package mesh discovers an Istio install through the Kubernetes API, named
// the way a real cluster names things: the istiod Deployments (label
// app=istiod) with their version and ISTIO_MULTIROOT_MESH, the `istio` mesh
// ConfigMap (PROXY_CONFIG_XDS_AGENT in defaultConfig.proxyMetadata), the
// ztunnel DaemonSet, and every proxy of the data plane — ztunnel pods,
// waypoints, gateways and sidecars — with the facts a fleet verification or
// a rotation needs about each (node, age, owner, whether its agent has
// PROXY_CONFIG_XDS_AGENT). It also reads the CA istiod signs with (the
// cacerts Secret) and the istio-ca-root-cert ConfigMaps istiod writes into
// every namespace.
//
// Everything here reads through kubernetes.Interface and returns values;
// nothing is written. The flags and their meaning are in istio-ca-facts.md
// §1 and §2.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// DefaultNamespace is the Istio namespace when nothing says otherwise.
const DefaultNamespace = "istio-system"

// Kind is the kind of a data-plane proxy.
type Kind string

// The proxy kinds, in the order meshca reports them (and restarts them:
// ztunnel before envoy proxies, facts §5).
const (
	// KindZtunnel is the ambient node proxy (one pod per node).
	KindZtunnel Kind = "ztunnel"
	// KindWaypoint is an ambient waypoint proxy (envoy + istio-agent).
	KindWaypoint Kind = "waypoint"
	// KindGateway is an ingress or egress gateway (envoy + istio-agent).
	KindGateway Kind = "gateway"
	// KindSidecar is an injected istio-proxy sidecar (envoy + istio-agent).
	KindSidecar Kind = "sidecar"
)

// Kinds lists every Kind in report order.
var Kinds = []Kind{KindZtunnel, KindWaypoint, KindGateway, KindSidecar}

// Envoy reports whether proxies of this kind are envoy driven by
// istio-agent (everything but ztunnel).
func (k Kind) Envoy() bool { return k != KindZtunnel }

// Order is the position of k in Kinds, for sorting; unknown kinds sort last.
func (k Kind) Order() int {
	for i, kk := range Kinds {
		if kk == k {
			return i
		}
	}
	return len(Kinds)
}

// Install is the Istio install as discovered.
type Install struct {
	// Namespace is the Istio namespace: where istiod and cacerts live.
	Namespace string
	// Istiods are the istiod Deployments in Namespace (one per revision).
	Istiods []Istiod
	// Config is the mesh ConfigMap; nil when there is none.
	Config *Config
	// Ztunnels are the ztunnel DaemonSets (usually one).
	Ztunnels []DaemonSet
	// Proxies is the data plane, sorted by kind, namespace and name.
	Proxies []Proxy
	// Warnings are findings that did not stop discovery.
	Warnings []string
}

// Options tunes Discover.
type Options struct {
	// Namespace is the Istio namespace. Empty: the namespace of the istiod
	// Deployments found in any namespace, DefaultNamespace preferred.
	Namespace string
}

// Discover finds the Istio install: istiod, the mesh config, ztunnel and
// every proxy. A missing istiod or mesh config is a warning, not an error
// (the data plane can be verified against explicit expectations without
// them); failing API calls are errors.
func Discover(ctx context.Context, cs kubernetes.Interface, opts Options) (*Install, error) {
	in := &Install{}
	istiods, err := FindIstiods(ctx, cs, opts.Namespace)
	if err != nil {
		return nil, err
	}
	in.Istiods = istiods
	in.Namespace = opts.Namespace
	switch {
	case in.Namespace != "":
	case len(istiods) > 0:
		in.Namespace = istiods[0].Namespace
	default:
		in.Namespace = DefaultNamespace
	}
	if len(istiods) == 0 {
		where := "any namespace"
		if opts.Namespace != "" {
			where = "namespace " + opts.Namespace
		}
		in.Warnings = append(in.Warnings, fmt.Sprintf("no istiod Deployment (label %s=%s) in %s: is Istio installed? (-n names the Istio namespace)", LabelApp, IstiodApp, where))
	}
	revision := ""
	if len(istiods) > 0 {
		revision = istiods[0].Revision
	}
	if in.Config, err = ReadConfig(ctx, cs, in.Namespace, revision); err != nil {
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		in.Warnings = append(in.Warnings, err.Error())
	}
	if in.Ztunnels, err = FindZtunnels(ctx, cs); err != nil {
		return nil, err
	}
	var warnings []string
	if in.Proxies, warnings, err = FindProxies(ctx, cs); err != nil {
		return nil, err
	}
	in.Warnings = append(in.Warnings, warnings...)
	return in, nil
}

// ErrNotFound marks a lookup that found nothing (no istiod, no mesh
// ConfigMap, no CA Secret). Test with errors.Is.
var ErrNotFound = errors.New("not found")

// Owner is the workload that owns a pod: a Deployment or DaemonSet (through
// its ReplicaSet for a Deployment), or the pod's direct controller.
type Owner struct {
	// Kind is the owner's kind (Deployment, DaemonSet, StatefulSet, ...).
	Kind string `json:"kind"`
	// Name is the owner's name, in the pod's namespace.
	Name string `json:"name"`
}

// String renders the owner as kubectl does: Kind/name.
func (o Owner) String() string {
	if o.Kind == "" {
		return ""
	}
	return o.Kind + "/" + o.Name
}

// Proxy is one data-plane proxy pod.
type Proxy struct {
	// Kind of proxy.
	Kind Kind
	// Namespace and Name of the pod.
	Namespace, Name string
	// Node the pod is scheduled on; empty while unscheduled.
	Node string
	// Created is the pod's creation time: an env var such as
	// PROXY_CONFIG_XDS_AGENT only reaches pods created after it was set.
	Created time.Time
	// Ready is true for a Running pod that is not terminating: only those
	// are read.
	Ready bool
	// NotReady says why a pod is not Ready ("Pending", "terminating", ...).
	NotReady string
	// XDSAgent is true when the istio-proxy container has
	// PROXY_CONFIG_XDS_AGENT=true: its agent pushes new roots to envoy
	// without a restart (PCDS, facts §2). Always false for ztunnel.
	XDSAgent bool
	// Injected is true when the pod carries sidecar.istio.io/status (the
	// injector's record).
	Injected bool
	// Revision is the pod's istio.io/rev label, if any.
	Revision string
	// Owner is the workload to restart to replace the pod.
	Owner Owner
}

// String names the proxy as namespace/name.
func (p *Proxy) String() string { return p.Namespace + "/" + p.Name }

// parseBool reads a boolean env value as istio does (strconv.ParseBool);
// anything unparsable is false.
func parseBool(s string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	return err == nil && b
}
