// Package sandbox is meshca's local proving ground (design.md §5): a real
// control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kwok — package cluster), real istiod processes backing the
// istiod pods, and a simulated ambient data plane (package mesh: ztunnel per
// node, waypoints, an ingress gateway) whose proxies obtain certificates from
// the real istiod and keep real mTLS traffic flowing through a probe that
// counts failed handshakes.
//
// The sandbox plays kubelet for the pods that need a process: it starts
// pilot-discovery when an istiod pod starts and stops it when the pod goes,
// projects the cacerts Secret into istiod's CA directory as a secret volume
// would, and starts an in-process ztunnel for every ztunnel pod and, for
// every envoy pod, either the real pilot-agent (Options.Agent AgentReal: the
// sandbox lays out the pod's filesystem and env as kubelet would, and the
// agent runs internal/sandbox/envoystub as its envoy) or the in-process
// simulated istio-agent; each is reachable through kwok's port-forward on
// pod port 15000. Nothing in meshca knows it talks to a sandbox.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox/cluster"
	"github.com/meshca/meshca/internal/sandbox/mesh"
)

// Options configures a sandbox.
type Options struct {
	// Dir holds everything (cluster, istiod run directories, CA material,
	// kubeconfig, state file).
	Dir    string
	BinDir string
	// Nodes is the number of kwok nodes (one ztunnel each).
	Nodes int
	// Workloads is the number of ambient workload pods, spread over
	// AppNamespaces namespaces and ServiceAccounts service accounts each.
	Workloads       int
	AppNamespaces   int
	ServiceAccounts int
	// CertTTL is the workload certificate lifetime proxies request
	// (SECRET_TTL); they refresh at half of it.
	CertTTL time.Duration
	// MultiRoot sets ISTIO_MULTIROOT_MESH on istiod; XDSAgent sets
	// PROXY_CONFIG_XDS_AGENT in the mesh config.
	MultiRoot, XDSAgent bool
	// ZtunnelVersion is "1.28" (1.28.1: istiod trust fixed at start),
	// "1.28.6" or "1.30" (CA_CERT_WATCHER: re-read on change).
	ZtunnelVersion string
	// GracePeriod is terminationGracePeriodSeconds of the proxy pods: 30 s
	// as in the Istio charts; shorter keeps tests short (the drain deadline
	// follows it as ztunnel's and envoy's do).
	GracePeriod time.Duration
	// KeyType of the generated CA.
	KeyType pki.KeyType
	// RootSubject, when set, is how the sandbox's root is generated (for
	// example O=Istio, CN=Root CA as Istio's tools/certs Makefile names
	// every root); by default the root's CN carries its creation time.
	RootSubject *pki.RootOptions
	// ProbeInterval is the pause between probe rounds; 0 disables the probe.
	ProbeInterval time.Duration
	// LongLived is the number of long-lived mTLS connections the probe keeps
	// open per pair kind (mesh.DefaultLongLived when zero, none when
	// negative).
	LongLived int
	// Clusters is the number of clusters (default 1). With more than one,
	// each gets its own control plane, istiod and cacerts under one shared
	// root with an intermediate per cluster, in DIR/cluster-N, with a
	// kubeconfig context of the same name; the probe adds cross-cluster
	// pairs (the east-west path modelled as a direct mTLS connection
	// between the proxies).
	Clusters int
	// Sidecars is the number of sidecar workloads (namespace
	// SidecarNamespace, labelled istio-injection=enabled) whose istio-proxy
	// istiod's own injection webhook adds; with it the sandbox registers
	// the webhook and istiod's injection templates.
	Sidecars int
	// Agent is what backs the envoy pods (waypoints, gateway, sidecars):
	// AgentReal (the default) runs the real pilot-agent with the envoy
	// stand-in behind it; AgentSimulated the in-process simulated
	// istio-agent, into which tests can inject faults (StallPCDS).
	Agent string
	// RootCertVolumeDelay is how long after istiod rewrites a namespace's
	// istio-ca-root-cert the file mounted into a real agent's pod changes,
	// as kubelet refreshes ConfigMap volumes on its sync period
	// (DefaultRootCertVolumeDelay when zero; negative means at once).
	RootCertVolumeDelay time.Duration
	// CA is how istiod gets its CA: CAPlugin (default), CASelfSigned or
	// CAExpiring.
	CA string
	// CALifetime is how long the CAExpiring CA lives after start
	// (DefaultCALifetime when zero); ExpireRoot makes the root expire then
	// rather than only the intermediate.
	CALifetime time.Duration
	ExpireRoot bool
	// ClusterName is set by Start on each member of a multi-cluster
	// sandbox: its name, context and CLUSTER_ID.
	ClusterName string

	// istiodVersion is set by Start from the istiod binary.
	istiodVersion string
	// Logf receives progress lines.
	Logf func(format string, args ...any)
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		return errors.New("sandbox: --dir is required")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.BinDir == "" {
		if o.BinDir, err = cluster.FindBinDir(); err != nil {
			return err
		}
	}
	if o.Nodes <= 0 {
		o.Nodes = 3
	}
	if o.Workloads < 0 {
		return errors.New("sandbox: --workloads must not be negative")
	}
	if o.AppNamespaces <= 0 {
		o.AppNamespaces = 2
	}
	if o.ServiceAccounts <= 0 {
		o.ServiceAccounts = 3
	}
	if o.CertTTL == 0 {
		o.CertTTL = 24 * time.Hour
	}
	if o.CertTTL < 10*time.Second {
		return fmt.Errorf("sandbox: --cert-ttl %s is too short (minimum 10s)", o.CertTTL)
	}
	if o.ZtunnelVersion == "" {
		o.ZtunnelVersion = "1.28"
	}
	if _, ok := ztunnelReleases[o.ZtunnelVersion]; !ok {
		return fmt.Errorf("sandbox: --ztunnel-version %q: use 1.28 (1.28.1), 1.28.6 or 1.30", o.ZtunnelVersion)
	}
	if o.GracePeriod == 0 {
		o.GracePeriod = mesh.DefaultTerminationGracePeriod
	}
	if o.GracePeriod < time.Second || o.GracePeriod%time.Second != 0 {
		return fmt.Errorf("sandbox: --grace-period %s: use whole seconds, at least 1s (the charts use 30s)", o.GracePeriod)
	}
	if o.Clusters <= 0 {
		o.Clusters = 1
	}
	switch o.Agent {
	case "":
		o.Agent = AgentReal
	case AgentSimulated, AgentReal:
	default:
		return fmt.Errorf("sandbox: --agent %q: use %s (pilot-agent built from the istio pin, with the envoy stand-in) or %s", o.Agent, AgentReal, AgentSimulated)
	}
	if o.Sidecars < 0 {
		return errors.New("sandbox: --sidecars must not be negative")
	}
	if o.Sidecars > 0 && o.Agent != AgentReal {
		return errors.New("sandbox: --sidecars needs --agent real: the istio-proxy istiod injects runs as the real pilot-agent")
	}
	if o.RootCertVolumeDelay == 0 {
		o.RootCertVolumeDelay = DefaultRootCertVolumeDelay
	}
	if o.KeyType == "" {
		o.KeyType = pki.ECDSAP256
	}
	if err := o.caDefaults(); err != nil {
		return err
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// clusterNames are the members' names: "" for a single cluster, else
// cluster-1 … cluster-N.
func (o *Options) clusterNames() []string {
	if o.Clusters <= 1 {
		return []string{""}
	}
	names := make([]string, o.Clusters)
	for i := range names {
		names[i] = fmt.Sprintf("cluster-%d", i+1)
	}
	return names
}

// clusterID is istiod's CLUSTER_ID and the proxies' ISTIO_META_CLUSTER_ID:
// "Kubernetes" (Istio's default) for a single cluster, else the name.
func (o *Options) clusterID() string {
	if o.ClusterName == "" {
		return ClusterID
	}
	return o.ClusterName
}

// Paths under Options.Dir.
const (
	// KubeconfigFile is the admin kubeconfig users point meshca and kubectl at.
	KubeconfigFile = "kubeconfig"
	// StateFile records the running sandbox for status, probe and down.
	StateFile = "sandbox.json"
	// CADir holds the CA material the sandbox installed (root key included:
	// it never goes into the cluster).
	CADir = "ca"
)

// State is the content of StateFile.
type State struct {
	PID         int       `json:"pid"`
	Kubeconfig  string    `json:"kubeconfig"`
	ControlAddr string    `json:"controlAddr"`
	Started     time.Time `json:"started"`
	Ready       bool      `json:"ready"`
	Nodes       int       `json:"nodes"`
	Workloads   int       `json:"workloads"`
	RootCA      string    `json:"rootCA"`
	// IstiodVersion is what the real istiod is built from.
	IstiodVersion string `json:"istiodVersion"`
	// Clusters names the kubeconfig contexts of a multi-cluster sandbox.
	Clusters []string `json:"clusters,omitempty"`
}

// ReadState reads the state file of a sandbox directory.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no sandbox in %s (no %s): start one with meshca sandbox up --dir %s", dir, StateFile, dir)
		}
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, StateFile), err)
	}
	return &s, nil
}

func writeState(dir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return pki.WriteFiles([]pki.File{{Path: filepath.Join(dir, StateFile), Data: data}}, true)
}

// generateCA makes the sandbox's initial CA with meshca's own CA code and
// keeps it under Dir/ca: one root (ca/root) and an intermediate per cluster
// name (ca/<name>; ca/sandbox for the single unnamed cluster), all under
// that root. Existing material is reused.
func generateCA(dir string, kt pki.KeyType, subject *pki.RootOptions, names []string) (map[string]*bundle.Bundle, error) {
	caDir := filepath.Join(dir, CADir)
	out := map[string]*bundle.Bundle{}
	var root *pki.CA
	for _, name := range names {
		sub := name
		if sub == "" {
			sub = "sandbox"
		}
		if b, err := bundle.Load(filepath.Join(caDir, sub)); err == nil {
			out[name] = b
			continue
		}
		if root == nil {
			ro := pki.RootOptions{KeyType: kt, CommonName: "Sandbox Root CA " + time.Now().UTC().Format("2006-01-02T15:04:05")}
			if subject != nil {
				ro = *subject
			}
			var err error
			root, err = pki.NewRoot(ro)
			if err != nil {
				return nil, err
			}
			if err := bundle.WriteRoot(filepath.Join(caDir, "root"), root, true); err != nil {
				return nil, err
			}
		}
		b, err := writeIntermediate(caDir, root, pki.IntermediateOptions{Cluster: sub, KeyType: kt})
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}

// writeIntermediate issues an intermediate under root and keeps its bundle
// in caDir/<cluster>.
func writeIntermediate(caDir string, root *pki.CA, o pki.IntermediateOptions) (*bundle.Bundle, error) {
	inter, err := pki.NewIntermediate(root, o)
	if err != nil {
		return nil, err
	}
	b, err := bundle.FromCA(root, inter)
	if err != nil {
		return nil, err
	}
	if err := b.Write(filepath.Join(caDir, o.Cluster), true); err != nil {
		return nil, err
	}
	return b, nil
}
