package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// contextName names the cluster, user and context in every kubeconfig.
const contextName = "meshca-sandbox"

// writeKubeconfig writes a kubeconfig for the client certificate certName
// under pki/ that talks to server. Certificates are embedded so that the file
// works from anywhere; it is written 0600 because it holds a private key.
func writeKubeconfig(path, server string, p *pki, certName string) error {
	certPEM, err := os.ReadFile(p.certPath(certName))
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	keyPEM, err := os.ReadFile(p.keyPath(certName))
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[contextName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos[contextName] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[contextName] = &clientcmdapi.Context{Cluster: contextName, AuthInfo: contextName}
	cfg.CurrentContext = contextName
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("encode kubeconfig %s: %w", path, err)
	}
	return writeFileAtomic(path, data, 0o600)
}

// restConfigFor builds a client configuration from the admin certificate.
func restConfigFor(server string, p *pki) (*rest.Config, error) {
	certPEM, err := os.ReadFile(p.certPath(adminName))
	if err != nil {
		return nil, fmt.Errorf("read admin certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(p.keyPath(adminName))
	if err != nil {
		return nil, fmt.Errorf("read admin key: %w", err)
	}
	return &rest.Config{
		Host: server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: certPEM,
			KeyData:  keyPEM,
		},
		// A sandbox has one user; client-side throttling only slows tests.
		QPS:   200,
		Burst: 400,
	}, nil
}

func kubeconfigPath(dir, name string) string {
	return filepath.Join(dir, name+".kubeconfig")
}
