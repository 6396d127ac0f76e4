// Package cluster owns the sandbox's real local Kubernetes control plane: it
// generates the cluster PKI and kubeconfigs, starts etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kwok as child processes from the
// binaries that hack/controlplane.sh builds into bin/, waits until each is
// ready, and stops them again without leaving stray processes.
//
// kwok plays the kubelet: nodes created with AddNodes become Ready, pods bound
// to them by the real scheduler become Running and Ready within a fraction of
// a second (kwok's "fast" stages), and kwok's fake kubelet serves port-forward
// requests, which ForwardPort maps per pod to a local address so that an
// ordinary client-go port-forward reaches a process on this machine.
//
// Everything a cluster writes lives under Config.Dir:
//
//	pki/            cluster CA, serving and client certificates, service-account keys (keys 0600)
//	*.kubeconfig    admin, controller-manager, scheduler and kwok kubeconfigs
//	etcd/           etcd data
//	kwok/           kwok's configuration (stages) and work directory
//	logs/<name>.log one log per component
//	pids            the running components, for StopDir (an out-of-process "down")
//
// The package is Linux-first: children run in their own process group and, unless
// Config.Detach is set, receive SIGKILL when the process that started them dies.
package cluster
