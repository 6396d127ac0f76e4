package mesh

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// Labels, names and env vars of a real Istio install (Helm charts and
// istioctl alike).
const (
	// LabelApp is the label istiod, ztunnel and the gateways carry.
	LabelApp = "app"
	// IstiodApp is the app label of istiod.
	IstiodApp = "istiod"
	// ZtunnelApp is the app label of ztunnel.
	ZtunnelApp = "ztunnel"
	// LabelRevision is the revision label of istiod and injected pods.
	LabelRevision = "istio.io/rev"
	// IstiodContainer is the name of istiod's container.
	IstiodContainer = "discovery"
	// MeshConfigMapName is the mesh ConfigMap of the default revision
	// (istio-<rev> for others), key MeshConfigKey.
	MeshConfigMapName = "istio"
	// MeshConfigKey is the key of the mesh config in MeshConfigMapName.
	MeshConfigKey = "mesh"
	// EnvMultiRoot is istiod's multi-root switch (facts §2).
	EnvMultiRoot = "ISTIO_MULTIROOT_MESH"
	// EnvXDSAgent is istio-agent's PCDS switch (facts §2).
	EnvXDSAgent = "PROXY_CONFIG_XDS_AGENT"
)

// Istiod is one istiod Deployment.
type Istiod struct {
	// Namespace and Name of the Deployment.
	Namespace, Name string
	// Revision is its istio.io/rev label ("" or "default" for the default
	// revision).
	Revision string
	// Image of the discovery container.
	Image string
	// Version is the image tag (e.g. "1.28.1"), or the Helm
	// app.kubernetes.io/version label when the image has none.
	Version string
	// MultiRoot is true when the discovery container has
	// ISTIO_MULTIROOT_MESH=true: istiod then hot-reloads a changed root and
	// pushes trust bundles (facts §1, §2).
	MultiRoot bool
	// Replicas is the desired replica count; ReadyReplicas how many are
	// ready.
	Replicas, ReadyReplicas int32
}

// FindIstiods lists the istiod Deployments (label app=istiod) in namespace,
// or in every namespace when it is empty. The result is sorted with
// DefaultNamespace first, then by namespace and name.
func FindIstiods(ctx context.Context, cs kubernetes.Interface, namespace string) ([]Istiod, error) {
	list, err := cs.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + IstiodApp})
	if err != nil {
		return nil, fmt.Errorf("list istiod deployments (%s=%s) in %s: %w", LabelApp, IstiodApp, namespaceName(namespace), err)
	}
	out := make([]Istiod, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, istiodOf(&list.Items[i]))
	}
	slices.SortFunc(out, func(a, b Istiod) int {
		if (a.Namespace == DefaultNamespace) != (b.Namespace == DefaultNamespace) {
			if a.Namespace == DefaultNamespace {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

func istiodOf(d *appsv1.Deployment) Istiod {
	in := Istiod{
		Namespace:     d.Namespace,
		Name:          d.Name,
		Revision:      d.Labels[LabelRevision],
		ReadyReplicas: d.Status.ReadyReplicas,
		Replicas:      1,
	}
	if d.Spec.Replicas != nil {
		in.Replicas = *d.Spec.Replicas
	}
	c := container(d.Spec.Template.Spec.Containers, IstiodContainer)
	if c == nil && len(d.Spec.Template.Spec.Containers) > 0 {
		c = &d.Spec.Template.Spec.Containers[0]
	}
	if c != nil {
		in.Image = c.Image
		in.Version = ImageTag(c.Image)
		in.MultiRoot = parseBool(envValue(c, EnvMultiRoot))
	}
	if in.Version == "" {
		in.Version = d.Labels["app.kubernetes.io/version"]
	}
	return in
}

// ImageTag returns the tag of an image reference ("docker.io/istio/pilot:1.28.1"
// gives "1.28.1"), ignoring a digest; empty when there is no tag.
func ImageTag(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	slash := strings.LastIndex(image, "/")
	if colon := strings.LastIndex(image, ":"); colon > slash {
		return image[colon+1:]
	}
	return ""
}

// Config is what meshca reads from the mesh ConfigMap.
type Config struct {
	// Namespace and Name of the ConfigMap.
	Namespace, Name string
	// TrustDomain is meshConfig.trustDomain ("cluster.local" when unset).
	TrustDomain string
	// XDSAgent is true when defaultConfig.proxyMetadata sets
	// PROXY_CONFIG_XDS_AGENT=true: pods created from then on get it in
	// their env (facts §2).
	XDSAgent bool
	// CACertificates is how many entries meshConfig.caCertificates has
	// (merged into the trust bundle when ISTIO_MULTIROOT_MESH is on).
	CACertificates int
}

// meshYAML is the part of Istio's MeshConfig meshca reads.
type meshYAML struct {
	TrustDomain   string `json:"trustDomain"`
	DefaultConfig struct {
		ProxyMetadata map[string]string `json:"proxyMetadata"`
	} `json:"defaultConfig"`
	CACertificates []any `json:"caCertificates"`
}

// ReadConfig reads the mesh ConfigMap of revision in namespace: istio-<rev>
// for a named revision (falling back to istio), istio otherwise. It returns
// an error wrapping ErrNotFound when there is none.
func ReadConfig(ctx context.Context, cs kubernetes.Interface, namespace, revision string) (*Config, error) {
	names := []string{MeshConfigMapName}
	if revision != "" && revision != "default" {
		names = []string{MeshConfigMapName + "-" + revision, MeshConfigMapName}
	}
	for _, name := range names {
		cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read mesh config configmap %s/%s: %w", namespace, name, err)
		}
		return ParseConfig(cm)
	}
	return nil, fmt.Errorf("mesh config configmap %s/%s: %w", namespace, names[0], ErrNotFound)
}

// ParseConfig reads the mesh key of a mesh ConfigMap.
func ParseConfig(cm *corev1.ConfigMap) (*Config, error) {
	mc := &Config{Namespace: cm.Namespace, Name: cm.Name, TrustDomain: "cluster.local"}
	var m meshYAML
	if err := yaml.Unmarshal([]byte(cm.Data[MeshConfigKey]), &m); err != nil {
		return nil, fmt.Errorf("mesh config configmap %s/%s: key %s: %w", cm.Namespace, cm.Name, MeshConfigKey, err)
	}
	if m.TrustDomain != "" {
		mc.TrustDomain = m.TrustDomain
	}
	mc.XDSAgent = parseBool(m.DefaultConfig.ProxyMetadata[EnvXDSAgent])
	mc.CACertificates = len(m.CACertificates)
	return mc, nil
}

// DaemonSet is a ztunnel DaemonSet.
type DaemonSet struct {
	// Namespace and Name of the DaemonSet.
	Namespace, Name string
	// Image of its first container; Version its tag.
	Image, Version string
	// Desired, Updated and Ready are the status counts of pods.
	Desired, Updated, Ready int32
}

// FindZtunnels lists the ztunnel DaemonSets (label app=ztunnel) in every
// namespace, sorted.
func FindZtunnels(ctx context.Context, cs kubernetes.Interface) ([]DaemonSet, error) {
	list, err := cs.AppsV1().DaemonSets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: LabelApp + "=" + ZtunnelApp})
	if err != nil {
		return nil, fmt.Errorf("list ztunnel daemonsets (%s=%s): %w", LabelApp, ZtunnelApp, err)
	}
	out := make([]DaemonSet, 0, len(list.Items))
	for i := range list.Items {
		d := &list.Items[i]
		ds := DaemonSet{
			Namespace: d.Namespace,
			Name:      d.Name,
			Desired:   d.Status.DesiredNumberScheduled,
			Updated:   d.Status.UpdatedNumberScheduled,
			Ready:     d.Status.NumberReady,
		}
		if cs := d.Spec.Template.Spec.Containers; len(cs) > 0 {
			ds.Image = cs[0].Image
			ds.Version = ImageTag(ds.Image)
		}
		out = append(out, ds)
	}
	slices.SortFunc(out, func(a, b DaemonSet) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

func container(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// envValue is the literal value of env var name in c ("" when unset or set
// from a reference).
func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func namespaceName(ns string) string {
	if ns == "" {
		return "all namespaces"
	}
	return "namespace " + ns
}
