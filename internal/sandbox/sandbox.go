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
// would, and starts an in-process ztunnel or istio-agent for every ztunnel
// or envoy pod, reachable through kwok's port-forward on pod port 15000.
// Nothing in meshca knows it talks to a sandbox.
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
	// ZtunnelVersion is "1.28" (istiod trust fixed at start) or "1.30"
	// (re-read on change).
	ZtunnelVersion string
	// KeyType of the generated CA.
	KeyType pki.KeyType
	// ProbeInterval is the pause between probe rounds; 0 disables the probe.
	ProbeInterval time.Duration
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
	switch o.ZtunnelVersion {
	case "":
		o.ZtunnelVersion = "1.28"
	case "1.28", "1.30":
	default:
		return fmt.Errorf("sandbox: --ztunnel-version %q: use 1.28 or 1.30", o.ZtunnelVersion)
	}
	if o.KeyType == "" {
		o.KeyType = pki.ECDSAP256
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
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

// generateCA makes the sandbox's initial CA (root + intermediate for
// cluster "sandbox") with meshca's own CA code and keeps it under Dir/ca.
func generateCA(dir string, kt pki.KeyType) (*bundle.Bundle, error) {
	caDir := filepath.Join(dir, CADir)
	if b, err := bundle.Load(filepath.Join(caDir, "sandbox")); err == nil {
		return b, nil
	}
	root, err := pki.NewRoot(pki.RootOptions{KeyType: kt, CommonName: "Sandbox Root CA " + time.Now().UTC().Format("2006-01-02T15:04:05")})
	if err != nil {
		return nil, err
	}
	if err := bundle.WriteRoot(filepath.Join(caDir, "root"), root, true); err != nil {
		return nil, err
	}
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "sandbox", KeyType: kt})
	if err != nil {
		return nil, err
	}
	b, err := bundle.FromCA(root, inter)
	if err != nil {
		return nil, err
	}
	if err := b.Write(filepath.Join(caDir, "sandbox"), true); err != nil {
		return nil, err
	}
	return b, nil
}
