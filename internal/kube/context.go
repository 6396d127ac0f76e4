package kube

import (
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// WithContext returns a copy of base, the command line's kubeconfig flags,
// that selects the kubeconfig context name ("" keeps base's): every other
// override (--kubeconfig, -n, --as, --as-group, --as-uid, --token, --user,
// --cluster, --server, TLS files, ...) applies to it unchanged, so a command
// that spans several contexts runs as the identity the operator gave for
// each of them.
func WithContext(base *genericclioptions.ConfigFlags, name string) *genericclioptions.ConfigFlags {
	f := genericclioptions.NewConfigFlags(true)
	f.CacheDir, f.KubeConfig = base.CacheDir, base.KubeConfig
	f.ClusterName, f.AuthInfoName, f.Context, f.Namespace = base.ClusterName, base.AuthInfoName, base.Context, base.Namespace
	f.APIServer, f.TLSServerName, f.Insecure = base.APIServer, base.TLSServerName, base.Insecure
	f.CertFile, f.KeyFile, f.CAFile, f.BearerToken = base.CertFile, base.KeyFile, base.CAFile, base.BearerToken
	f.Impersonate, f.ImpersonateUID, f.ImpersonateGroup, f.ImpersonateUserExtra = base.Impersonate, base.ImpersonateUID, base.ImpersonateGroup, base.ImpersonateUserExtra
	f.Username, f.Password, f.Timeout = base.Username, base.Password, base.Timeout
	f.DisableCompression, f.ProxyURL, f.WrapConfigFn = base.DisableCompression, base.ProxyURL, base.WrapConfigFn
	if name != "" {
		f.Context = &name
	}
	return f
}
