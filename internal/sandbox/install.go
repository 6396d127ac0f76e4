package sandbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/bundle"
)

// Names and labels of the simulated install: exactly those of a real Istio
// ambient install (istiod and ztunnel Helm charts, the waypoint controller,
// the ingress gateway), so that meshca discovers them as it would in a real
// cluster.
const (
	IstioNamespace = "istio-system"
	IstiodName     = "istiod"
	ZtunnelName    = "ztunnel"
	GatewayName    = "istio-ingressgateway"
	WaypointName   = "waypoint"
	CACertsSecret  = "cacerts"
	// SelfSignedSecret is where istiod keeps its self-signed CA.
	SelfSignedSecret = "istio-ca-secret"
	MeshConfigMap    = "istio"
	RootCertConfig   = "istio-ca-root-cert"
	TrustDomain      = "cluster.local"
	ClusterID        = "Kubernetes"
	// proxyVersion is the release the simulated envoy proxies follow.
	proxyVersion     = "1.28.1"
	proxyContainer   = "istio-proxy"
	labelDataplane   = "istio.io/dataplane-mode"
	labelManagedBy   = "gateway.istio.io/managed"
	managedByMesh    = "istio.io-mesh-controller"
	labelGatewayName = "gateway.networking.k8s.io/gateway-name"
	labelWorkload    = "sandbox.meshca.io/workload"
	// EnvMultiRoot and EnvXDSAgent are the two flags of istio-ca-facts.md §2.
	EnvMultiRoot = "ISTIO_MULTIROOT_MESH"
	EnvXDSAgent  = "PROXY_CONFIG_XDS_AGENT"
	// EnvSecretTTL is the workload certificate lifetime proxies request.
	EnvSecretTTL = "SECRET_TTL"
	// ProxyReadyGate is the readiness gate of every proxy pod: the sandbox,
	// playing kubelet, sets it (and the pod's Ready condition) only once the
	// simulated proxy holds its certificates and its admin port answers a
	// port-forward, as a real proxy's readiness probe would.
	ProxyReadyGate = "sandbox.meshca.io/proxy-ready"
)

// ztunnelReleases are the simulated ztunnel versions, by --ztunnel-version:
// the image tag and whether CA_CERT_WATCHER re-reads istiod's root file
// (facts §3: from 1.28.6, 1.29.2 and 1.30.0).
var ztunnelReleases = map[string]struct {
	tag     string
	watcher bool
}{
	"1.28":   {"1.28.1", false},
	"1.28.6": {"1.28.6", true},
	"1.30":   {"1.30.0", true},
}

// installSpec is what Install creates.
type installSpec struct {
	Workloads      int
	CertTTL        string
	MultiRoot      bool
	XDSAgent       bool
	ZtunnelVersion string
	// IstiodVersion is the version of the istiod binary, for its image tag.
	IstiodVersion string
	// GracePeriod is terminationGracePeriodSeconds of the proxy pods (30 s
	// in the Istio charts).
	GracePeriod time.Duration
	// ClusterID is istiod's CLUSTER_ID and the proxies' ISTIO_META_CLUSTER_ID.
	ClusterID string
	Bundle    *bundle.Bundle
	// AppNamespaces are the ambient namespaces the workloads are spread over.
	AppNamespaces []string
	// ServiceAccounts per app namespace.
	ServiceAccounts int
}

func (s installSpec) meshConfig() string {
	mesh := "trustDomain: " + TrustDomain + "\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n"
	if s.XDSAgent {
		mesh += "  proxyMetadata:\n    " + EnvXDSAgent + ": \"true\"\n"
	}
	return mesh
}

// install creates the simulated Istio ambient install.
func install(ctx context.Context, c kubernetes.Interface, s installSpec) error {
	create := func(kind, name string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", kind, name, err)
		}
		return nil
	}
	ns := func(name string, labels map[string]string) error {
		_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		return create("namespace", name, err)
	}
	sa := func(namespace, name string) error {
		_, err := c.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}, metav1.CreateOptions{})
		return create("serviceaccount", namespace+"/"+name, err)
	}
	if err := ns(IstioNamespace, nil); err != nil {
		return err
	}
	for _, name := range []string{IstiodName, ZtunnelName, GatewayName} {
		if err := sa(IstioNamespace, name); err != nil {
			return err
		}
	}
	_, err := c.CoreV1().ConfigMaps(IstioNamespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: MeshConfigMap, Namespace: IstioNamespace, Labels: map[string]string{"istio.io/rev": "default", "release": "istio"}},
		Data:       map[string]string{"mesh": s.meshConfig(), "meshNetworks": "networks: {}\n"},
	}, metav1.CreateOptions{})
	if err := create("configmap", MeshConfigMap, err); err != nil {
		return err
	}
	// Without a bundle istiod starts on its self-signed CA (the cacerts
	// volume is optional, as in the chart).
	if s.Bundle != nil {
		_, err = c.CoreV1().Secrets(IstioNamespace).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: CACertsSecret, Namespace: IstioNamespace},
			Type:       corev1.SecretTypeOpaque,
			Data:       s.Bundle.SecretData(),
		}, metav1.CreateOptions{})
		if err := create("secret", CACertsSecret, err); err != nil {
			return err
		}
	}
	_, err = c.CoreV1().Services(IstioNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: IstiodName, Namespace: IstioNamespace, Labels: map[string]string{"app": IstiodName, "istio": "pilot"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": IstiodName, "istio": "pilot"},
			Ports: []corev1.ServicePort{
				{Name: "grpc-xds", Port: 15010, TargetPort: intstr.FromInt32(15010)},
				{Name: "https-dns", Port: 15012, TargetPort: intstr.FromInt32(15012)},
				{Name: "https-webhook", Port: 443, TargetPort: intstr.FromInt32(15017)},
				{Name: "http-monitoring", Port: 15014, TargetPort: intstr.FromInt32(15014)},
			},
		},
	}, metav1.CreateOptions{})
	if err := create("service", IstiodName, err); err != nil {
		return err
	}

	istiodEnv := []corev1.EnvVar{
		{Name: "PILOT_ENABLE_AMBIENT", Value: "true"},
		{Name: "CA_TRUSTED_NODE_ACCOUNTS", Value: IstioNamespace + "/" + ZtunnelName},
		{Name: EnvMultiRoot, Value: strconv.FormatBool(s.MultiRoot)},
		{Name: "CLUSTER_ID", Value: s.ClusterID},
	}
	istiod := deployment(IstioNamespace, IstiodName, 1,
		map[string]string{"app": IstiodName, "istio": "pilot", "istio.io/rev": "default"},
		corev1.Container{Name: "discovery", Image: "docker.io/istio/pilot:" + s.IstiodVersion, Args: []string{"discovery"}, Env: istiodEnv,
			VolumeMounts: []corev1.VolumeMount{{Name: "cacerts", MountPath: "/etc/cacerts", ReadOnly: true}}},
		IstiodName)
	istiod.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "cacerts", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: CACertsSecret, Optional: ptr.To(true)}}}}
	_, err = c.AppsV1().Deployments(IstioNamespace).Create(ctx, istiod, metav1.CreateOptions{})
	if err := create("deployment", IstiodName, err); err != nil {
		return err
	}

	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: ZtunnelName, Namespace: IstioNamespace, Labels: map[string]string{"app": ZtunnelName, "app.kubernetes.io/name": ZtunnelName}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": ZtunnelName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": ZtunnelName, "app.kubernetes.io/name": ZtunnelName, "sidecar.istio.io/inject": "false", labelDataplane: "none"}},
				Spec: corev1.PodSpec{
					ServiceAccountName: ZtunnelName,
					Containers: []corev1.Container{{
						Name: "istio-proxy", Image: "docker.io/istio/ztunnel:" + ztunnelReleases[s.ZtunnelVersion].tag,
						Args: []string{"proxy", "ztunnel"},
						Env: []corev1.EnvVar{
							{Name: "CA_ADDRESS", Value: "istiod.istio-system.svc:15012"},
							{Name: "XDS_ADDRESS", Value: "istiod.istio-system.svc:15012"},
							{Name: EnvSecretTTL, Value: s.CertTTL},
							{Name: "ISTIO_META_CLUSTER_ID", Value: s.ClusterID},
						},
						Ports: []corev1.ContainerPort{{Name: "ztunnel-stats", ContainerPort: 15020}},
					}},
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					TerminationGracePeriodSeconds: ptr.To(int64(s.GracePeriod / time.Second)),
					ReadinessGates:                []corev1.PodReadinessGate{{ConditionType: ProxyReadyGate}},
				},
			},
			// The ztunnel chart's update strategy (facts §7): a new pod
			// takes over on a node before the old one drains.
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type: appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{
					MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0)),
				},
			},
		},
	}
	_, err = c.AppsV1().DaemonSets(IstioNamespace).Create(ctx, ds, metav1.CreateOptions{})
	if err := create("daemonset", ZtunnelName, err); err != nil {
		return err
	}

	gw := s.proxyDeployment(IstioNamespace, GatewayName,
		map[string]string{"app": GatewayName, "istio": "ingressgateway", "sidecar.istio.io/inject": "false"},
		s.proxyContainer("router"), GatewayName)
	_, err = c.AppsV1().Deployments(IstioNamespace).Create(ctx, gw, metav1.CreateOptions{})
	if err := create("deployment", GatewayName, err); err != nil {
		return err
	}

	for i, name := range s.AppNamespaces {
		if err := ns(name, map[string]string{labelDataplane: "ambient"}); err != nil {
			return err
		}
		for j := range s.ServiceAccounts {
			if err := sa(name, fmt.Sprintf("app-%d", j)); err != nil {
				return err
			}
		}
		if err := sa(name, WaypointName); err != nil {
			return err
		}
		wp := s.proxyDeployment(name, WaypointName, map[string]string{
			labelManagedBy: managedByMesh, labelGatewayName: WaypointName, "istio.io/gateway-name": WaypointName, labelDataplane: "none",
		}, s.proxyContainer("waypoint"), WaypointName)
		_, err = c.AppsV1().Deployments(name).Create(ctx, wp, metav1.CreateOptions{})
		if err := create("deployment", name+"/"+WaypointName, err); err != nil {
			return err
		}
		// Spread the workloads over the namespaces and service accounts.
		for j := range s.ServiceAccounts {
			replicas := int32(s.Workloads / (len(s.AppNamespaces) * s.ServiceAccounts))
			if extra := s.Workloads % (len(s.AppNamespaces) * s.ServiceAccounts); i*s.ServiceAccounts+j < extra {
				replicas++
			}
			if replicas == 0 {
				continue
			}
			app := fmt.Sprintf("app-%d", j)
			d := deployment(name, app, replicas, map[string]string{"app": app, labelWorkload: "true"},
				corev1.Container{Name: "app", Image: "registry.k8s.io/pause:3.10"}, app)
			// Spread all workloads over the nodes so that every ztunnel
			// holds certificates.
			d.Spec.Template.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
				MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{labelWorkload: "true"}},
			}}
			_, err = c.AppsV1().Deployments(name).Create(ctx, d, metav1.CreateOptions{})
			if err := create("deployment", name+"/"+app, err); err != nil {
				return err
			}
		}
	}
	return nil
}

// proxyContainer is the istio-proxy container as the injector renders it:
// the mesh config's proxyMetadata become env vars of the pod at creation.
func (s installSpec) proxyContainer(role string) corev1.Container {
	env := []corev1.EnvVar{
		{Name: "ISTIO_META_CLUSTER_ID", Value: s.ClusterID},
		{Name: EnvSecretTTL, Value: s.CertTTL},
	}
	if s.XDSAgent {
		env = append(env, corev1.EnvVar{Name: EnvXDSAgent, Value: "true"})
	}
	return corev1.Container{
		Name: proxyContainer, Image: "docker.io/istio/proxyv2:" + proxyVersion,
		Args: []string{"proxy", role, "--domain", "$(POD_NAMESPACE).svc.cluster.local"},
		Env:  env,
	}
}

// proxyDeployment is a one-replica envoy Deployment as the gateway chart
// and the waypoint controller render it: rolling update with maxSurge 1 and
// maxUnavailable 0, the chart's grace period, and the proxy readiness gate.
func (s installSpec) proxyDeployment(namespace, name string, labels map[string]string, container corev1.Container, serviceAccount string) *appsv1.Deployment {
	d := deployment(namespace, name, 1, labels, container, serviceAccount)
	d.Spec.Strategy = appsv1.DeploymentStrategy{
		Type: appsv1.RollingUpdateDeploymentStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDeployment{
			MaxSurge: ptr.To(intstr.FromInt32(1)), MaxUnavailable: ptr.To(intstr.FromInt32(0)),
		},
	}
	d.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(int64(s.GracePeriod / time.Second))
	d.Spec.Template.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: ProxyReadyGate}}
	return d
}

func deployment(namespace, name string, replicas int32, labels map[string]string, container corev1.Container, serviceAccount string) *appsv1.Deployment {
	selector := map[string]string{}
	for _, k := range []string{"app", "istio", labelGatewayName} {
		if v, ok := labels[k]; ok {
			selector[k] = v
		}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: serviceAccount,
					Containers:         []corev1.Container{container},
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				},
			},
		},
	}
}
