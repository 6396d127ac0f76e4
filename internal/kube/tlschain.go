package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strconv"
	"time"
)

// ServingChain opens a port-forward to the pod's port and returns the
// certificate chain it serves in a TLS handshake (leaf first). It only
// reads the chain: the caller judges it. ALPN offers h2, which gRPC servers
// such as istiod's port 15012 require.
func (f *Fetcher) ServingChain(ctx context.Context, namespace, pod string, port int) ([]*x509.Certificate, error) {
	forward := f.forward
	if forward == nil {
		forward = f.portForward
	}
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fw, err := forward(ctx, namespace, pod, port)
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s/%s port %d: %w", namespace, pod, port, err)
	}
	defer fw.stop()
	d := tls.Dialer{Config: &tls.Config{
		InsecureSkipVerify: true, // the chain is returned to be verified by the caller
		NextProtos:         []string{"h2"},
		MinVersion:         tls.VersionTLS12,
	}, NetDialer: &net.Dialer{Timeout: timeout}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(fw.localPort)))
	if err != nil {
		if msg := fw.pod(); msg != "" {
			err = fmt.Errorf("%w (pod side: %s)", err, msg)
		}
		return nil, fmt.Errorf("TLS handshake with pod %s/%s port %d: %w", namespace, pod, port, err)
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(chain) == 0 {
		return nil, fmt.Errorf("pod %s/%s port %d served no certificate", namespace, pod, port)
	}
	return chain, nil
}
