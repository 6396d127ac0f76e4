package proxy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestReadRootConfigMap(t *testing.T) {
	p := newRotationPKI(t)
	cm := func(data map[string]string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: RootConfigMapName}, Data: data}
	}
	both := pemText(p.oldRoot.cert) + pemText(p.newRoot.cert)
	tests := map[string]struct {
		cm    *corev1.ConfigMap
		roots []string
		trust Trust
		err   []string
	}{
		"a phase-1 ConfigMap carries the old and the new root": {
			cm:    cm(map[string]string{RootCertKey: both}),
			roots: fps(p.oldRoot.cert, p.newRoot.cert),
			trust: NewTrust(fps(p.oldRoot.cert, p.newRoot.cert)...),
		},
		"old + new + new is three roots, a set of two": {
			cm:    cm(map[string]string{RootCertKey: both + pemText(p.newRoot.cert)}),
			roots: fps(p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert),
			trust: Trust{Roots: NewTrust(fps(p.oldRoot.cert, p.newRoot.cert)...).Roots, Duplicates: 1},
		},
		"a ConfigMap without root-cert.pem is refused by name": {
			cm:  cm(map[string]string{"ca.crt": both}),
			err: []string{"configmap bookinfo/istio-ca-root-cert: no root-cert.pem key"},
		},
		"a truncated root-cert.pem is refused by name": {
			cm:  cm(map[string]string{RootCertKey: both[:len(both)-40]}),
			err: []string{"configmap bookinfo/istio-ca-root-cert: root-cert.pem", "PEM block 1"},
		},
		"an empty root-cert.pem is refused": {
			cm:  cm(map[string]string{RootCertKey: ""}),
			err: []string{"configmap bookinfo/istio-ca-root-cert: root-cert.pem: empty file"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ReadRootConfigMap(tc.cm)
			wantErr(t, err, tc.err...)
			if err != nil {
				return
			}
			if diff := cmp.Diff(tc.roots, certFPs(got.Roots)); diff != "" {
				t.Errorf("roots (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.trust, got.Trust()); diff != "" {
				t.Errorf("trust (-want +got):\n%s", diff)
			}
			if got.Data != tc.cm.Data[RootCertKey] {
				t.Error("Data is not root-cert.pem verbatim")
			}
		})
	}
}
