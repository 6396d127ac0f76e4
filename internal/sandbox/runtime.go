package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// podKind is what backs a pod.
type podKind int

const (
	kindNone podKind = iota
	kindIstiod
	kindZtunnel
	kindWaypoint
	kindGateway
	kindSidecar
	kindWorkload
)

func (k podKind) String() string {
	return [...]string{"none", "istiod", "ztunnel", "waypoint", "gateway", "sidecar", "workload"}[k]
}

// classify tells what a pod is, from the labels a real install uses.
func classify(pod *corev1.Pod, ambientNS bool) podKind {
	l := pod.Labels
	switch {
	case pod.Namespace == IstioNamespace && l["app"] == IstiodName:
		return kindIstiod
	case pod.Namespace == IstioNamespace && l["app"] == ZtunnelName:
		return kindZtunnel
	case l[labelManagedBy] == managedByMesh:
		return kindWaypoint
	case l["istio"] == "ingressgateway":
		return kindGateway
	case hasContainer(pod, proxyContainer):
		return kindSidecar
	case ambientNS && l[labelDataplane] != "none":
		return kindWorkload
	}
	return kindNone
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// running reports whether a pod is up and not going away.
func running(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp == nil && pod.Spec.NodeName != "" && pod.Status.Phase == corev1.PodRunning
}

// runtime plays kubelet for the pods that need a process or a simulated
// proxy. One worker reconciles pods from a queue, so a pod's backing is
// started and stopped in order.
type runtime struct {
	opts    *Options
	cluster *cluster.Cluster
	client  kubernetes.Interface
	factory informers.SharedInformerFactory
	pods    listersv1.PodLister
	nss     listersv1.NamespaceLister
	secrets listersv1.SecretLister
	cms     listersv1.ConfigMapLister
	queue   workqueue.TypedRateLimitingInterface[string]
	svc     *serviceProxy
	// hooks is istiod's webhook Service (port 443 → 15017) on loopback:
	// the API server calls the injection webhook through it.
	hooks *serviceProxy
	data  *dataPlane
	// fetcher reads a proxy pod's admin port through an ordinary
	// port-forward, once, for its readiness.
	fetcher *kube.Fetcher
	// ctx is the runtime's lifetime, set by run.
	ctx context.Context

	// The envoy stand-in binary, found or built once (envoyStub).
	stubOnce sync.Once
	stubPath string
	stubErr  error

	mu      sync.Mutex
	istiods map[string]*istiod // by pod name; the newest serves the Service
	order   []string           // istiod pods in start order
	backed  map[string]podKind // pod key → what backs it
}

func newRuntime(opts *Options, c *cluster.Cluster) (*runtime, error) {
	svc, err := newServiceProxy()
	if err != nil {
		return nil, err
	}
	hooks, err := newServiceProxy()
	if err != nil {
		svc.close()
		return nil, err
	}
	client := c.Client()
	f := informers.NewSharedInformerFactory(client, 0)
	r := &runtime{
		opts: opts, cluster: c, client: client, factory: f,
		pods:    f.Core().V1().Pods().Lister(),
		nss:     f.Core().V1().Namespaces().Lister(),
		secrets: f.Core().V1().Secrets().Lister(),
		cms:     f.Core().V1().ConfigMaps().Lister(),
		queue:   workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		svc:     svc,
		hooks:   hooks,
		istiods: map[string]*istiod{},
		backed:  map[string]podKind{},
	}
	r.data = newDataPlane(r)
	kc, err := kube.NewClientFromConfig(c.RESTConfig(), "", false)
	if err != nil {
		return nil, err
	}
	r.fetcher = kube.NewFetcher(kc)
	// One attempt, no pod GET: exactly what a user's single port-forward
	// would do.
	r.fetcher.Attempts, r.fetcher.SkipPodCheck, r.fetcher.Timeout = 1, true, 5*time.Second
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	if _, err := f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) }, DeleteFunc: enqueue,
	}); err != nil {
		return nil, err
	}
	onCACerts := func(obj any) {
		if s, ok := obj.(*corev1.Secret); ok && s.Namespace == IstioNamespace && s.Name == CACertsSecret {
			r.syncIstiodVolumes()
		}
	}
	if _, err := f.Core().V1().Secrets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onCACerts, UpdateFunc: func(_, n any) { onCACerts(n) },
	}); err != nil {
		return nil, err
	}
	onCM := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok {
			return
		}
		switch {
		case cm.Namespace == IstioNamespace && cm.Name == MeshConfigMap:
			r.syncIstiodVolumes()
		case cm.Name == RootCertConfig:
			r.data.rootCertChanged(cm.Namespace, []byte(cm.Data["root-cert.pem"]))
		}
	}
	if _, err := f.Core().V1().ConfigMaps().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onCM, UpdateFunc: func(_, n any) { onCM(n) },
	}); err != nil {
		return nil, err
	}
	f.Core().V1().Namespaces().Informer()
	return r, nil
}

func (r *runtime) run(ctx context.Context) error {
	r.ctx = ctx
	r.factory.Start(ctx.Done())
	for typ, ok := range r.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sandbox: informer for %v did not sync", typ)
		}
	}
	go func() {
		<-ctx.Done()
		r.queue.ShutDown()
	}()
	for r.processNext(ctx) {
	}
	return nil
}

func (r *runtime) processNext(ctx context.Context) bool {
	key, quit := r.queue.Get()
	if quit {
		return false
	}
	defer r.queue.Done(key)
	if err := r.reconcile(ctx, key); err != nil {
		level := slog.LevelWarn
		if errors.Is(err, errNoRootCert) {
			level = slog.LevelDebug
		}
		slog.Log(ctx, level, "sandbox: reconcile pod", "pod", key, "err", err)
		r.queue.AddRateLimited(key)
		return true
	}
	r.queue.Forget(key)
	return true
}

func (r *runtime) isAmbient(ns string) bool {
	n, err := r.nss.Get(ns)
	return err == nil && n.Labels[labelDataplane] == "ambient"
}

// reconcile starts or stops what backs the pod named key.
func (r *runtime) reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	pod, err := r.pods.Pods(ns).Get(name)
	if err != nil {
		pod = nil
	}
	r.mu.Lock()
	kind, isBacked := r.backed[key]
	r.mu.Unlock()
	up := pod != nil && running(pod)
	if pod != nil && !isBacked {
		kind = classify(pod, r.isAmbient(pod.Namespace))
	}
	switch {
	case up && !isBacked:
		if err := r.start(ctx, kind, pod); err != nil {
			return err
		}
		r.mu.Lock()
		r.backed[key] = kind
		r.mu.Unlock()
	case !up && isBacked:
		r.stop(kind, ns, name)
		r.mu.Lock()
		delete(r.backed, key)
		r.mu.Unlock()
	}
	return nil
}

func (r *runtime) start(ctx context.Context, kind podKind, pod *corev1.Pod) error {
	switch kind {
	case kindIstiod:
		return r.startIstiod(ctx, pod)
	case kindZtunnel:
		return r.data.startZtunnel(ctx, pod)
	case kindWaypoint, kindGateway, kindSidecar:
		return r.data.startAgent(ctx, pod, kind)
	case kindWorkload:
		r.data.workloadsChanged(pod.Spec.NodeName)
	}
	return nil
}

func (r *runtime) stop(kind podKind, ns, name string) {
	switch kind {
	case kindIstiod:
		r.stopIstiod(name)
	case kindZtunnel, kindWaypoint, kindGateway, kindSidecar:
		r.data.terminate(ns, name)
	case kindWorkload:
		r.data.workloadsChanged("")
	}
}

// cacertsData returns the cacerts Secret data as a secret volume shows it
// (empty when the Secret is absent: the volume is optional in the chart).
func (r *runtime) cacertsData() map[string][]byte {
	s, err := r.secrets.Secrets(IstioNamespace).Get(CACertsSecret)
	if err != nil {
		return map[string][]byte{}
	}
	return s.Data
}

func (r *runtime) meshConfig() string {
	cm, err := r.cms.ConfigMaps(IstioNamespace).Get(MeshConfigMap)
	if err != nil {
		return ""
	}
	return cm.Data["mesh"]
}

func (r *runtime) startIstiod(ctx context.Context, pod *corev1.Pod) error {
	d, err := startIstiod(ctx, pod, istiodOptions{
		binary:     r.cluster.Binary("pilot-discovery"),
		runDir:     r.opts.Dir,
		kubeconfig: r.cluster.Kubeconfig(),
		cacerts:    r.cacertsData(),
		mesh:       r.meshConfig(),
	})
	if err != nil {
		return err
	}
	// Pod port 15012 reaches this istiod's CA and xDS port through kwok's
	// port-forward, as on a real pod (meshca asks each replica which chain
	// it serves).
	if err := r.cluster.ForwardPort(ctx, pod.Namespace, pod.Name, istiodCAPort, d.caPort()); err != nil {
		_ = d.stop()
		return err
	}
	r.mu.Lock()
	r.istiods[pod.Name] = d
	r.order = append(r.order, pod.Name)
	r.mu.Unlock()
	r.svc.setBackend(d.CAAddr)
	r.hooks.setBackend(d.webhookAddr)
	r.opts.Logf("istiod %s ready (CA %s, multi-root %s)", pod.Name, d.CAAddr, d.env[EnvMultiRoot])
	return nil
}

func (r *runtime) stopIstiod(name string) {
	r.mu.Lock()
	d := r.istiods[name]
	delete(r.istiods, name)
	var newest *istiod
	for i := len(r.order) - 1; i >= 0; i-- {
		if r.order[i] == name {
			r.order = append(r.order[:i], r.order[i+1:]...)
			continue
		}
		if newest == nil {
			newest = r.istiods[r.order[i]]
		}
	}
	r.mu.Unlock()
	if newest != nil {
		r.svc.setBackend(newest.CAAddr)
		r.hooks.setBackend(newest.webhookAddr)
	} else {
		r.svc.setBackend("")
		r.hooks.setBackend("")
	}
	if d != nil {
		if err := d.stop(); err != nil {
			slog.Debug("sandbox: istiod stopped", "pod", name, "err", err)
		}
	}
}

// istiodMultiRoot reports whether the serving istiod has ISTIO_MULTIROOT_MESH.
func (r *runtime) istiodMultiRoot() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order) == 0 {
		return false
	}
	return r.istiods[r.order[len(r.order)-1]].env[EnvMultiRoot] == "true"
}

// istiodLogContains reports whether any running istiod logged s.
func (r *runtime) istiodLogContains(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.istiods {
		if d.logContains(s) {
			return true
		}
	}
	return false
}

// syncIstiodVolumes projects the current cacerts and mesh config into every
// running istiod, as kubelet refreshes secret and ConfigMap volumes.
func (r *runtime) syncIstiodVolumes() {
	data, mesh := r.cacertsData(), r.meshConfig()
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, d := range r.istiods {
		if changed, err := d.syncCACerts(data); err != nil {
			slog.Warn("sandbox: sync cacerts", "istiod", name, "err", err)
		} else if changed {
			slog.Debug("sandbox: cacerts synced", "istiod", name)
		}
		if _, err := d.syncMesh(mesh); err != nil {
			slog.Warn("sandbox: sync mesh config", "istiod", name, "err", err)
		}
	}
}

func (r *runtime) shutdown() {
	r.data.stopAll()
	r.mu.Lock()
	names := append([]string(nil), r.order...)
	r.mu.Unlock()
	for _, n := range names {
		r.stopIstiod(n)
	}
	r.svc.close()
	r.hooks.close()
}

// identitiesOn lists the SPIFFE identities of the ambient workloads running
// on node, sorted.
func (r *runtime) identitiesOn(node string) []string {
	pods, err := r.pods.List(labels.Everything())
	if err != nil {
		return nil
	}
	set := map[string]bool{}
	for _, p := range pods {
		if p.Spec.NodeName == node && running(p) && classify(p, r.isAmbient(p.Namespace)) == kindWorkload {
			sa := p.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			set[pki.SPIFFEID(TrustDomain, p.Namespace, sa)] = true
		}
	}
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// rootCertOf returns the istio-ca-root-cert bytes of a namespace, as a pod
// mounting it would read them now.
func (r *runtime) rootCertOf(ns string) []byte {
	cm, err := r.cms.ConfigMaps(ns).Get(RootCertConfig)
	if err != nil {
		return nil
	}
	return []byte(cm.Data["root-cert.pem"])
}

// token returns a ServiceAccount token for the istio-ca audience, as the
// projected istio-token volume of a pod holds.
func (r *runtime) token(ctx context.Context, ns, sa string) (string, error) {
	exp := int64(3600)
	tr, err := r.client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", ns, sa, err)
	}
	return tr.Status.Token, nil
}

// watchReady plays the kubelet's readiness probe for a proxy pod that
// carries ProxyReadyGate: once the proxy holds its certificates and its
// admin port answers one unretried port-forward through the API server and
// kwok — what istioctl or meshca would open — it sets the gate's condition
// and Ready on the pod. Only then do rollouts move on and `sandbox up`
// report ready.
func (r *runtime) watchReady(pod *corev1.Pod, p *proxyPod) {
	if !slices.ContainsFunc(pod.Spec.ReadinessGates, func(g corev1.PodReadinessGate) bool { return g.ConditionType == ProxyReadyGate }) {
		r.data.markReady(p)
		return
	}
	ns, name, ctx := pod.Namespace, pod.Name, r.ctx
	go func() {
		var last error
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
			if !p.proxy().Ready() {
				last = errors.New("no certificate yet")
				return false, nil
			}
			if p.agent != nil {
				if last = p.agent.healthy(ctx); last != nil {
					return false, nil
				}
			}
			if _, last = r.fetcher.Get(ctx, ns, name, "/config_dump"); last != nil {
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			if ctx.Err() == nil {
				slog.Warn("sandbox: proxy pod never became ready", "pod", ns+"/"+name, "err", last)
			}
			return
		}
		now := metav1.Now()
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.PodCondition{
			{Type: ProxyReadyGate, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}}})
		if _, err := r.client.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			if ctx.Err() == nil && !apierrors.IsNotFound(err) {
				slog.Warn("sandbox: mark proxy pod ready", "pod", ns+"/"+name, "err", err)
			}
			return
		}
		r.data.markReady(p)
	}()
}
