package rotate

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

func TestUnitSelfSignedBundle(t *testing.T) {
	ca, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.EncodeKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert := pki.EncodeCert(ca.Cert)
	tests := map[string]struct {
		data     map[string][]byte
		wantRoot []byte
		wantErr  string
	}{
		"istiod's layout: root-cert.pem is ca-cert.pem": {
			data:     map[string][]byte{"ca-cert.pem": cert, "ca-key.pem": key, "cert-chain.pem": nil, "key.pem": nil, "root-cert.pem": cert},
			wantRoot: cert,
		},
		"an empty root-cert.pem falls back to ca-cert.pem": {
			data:     map[string][]byte{"ca-cert.pem": cert, "ca-key.pem": key, "root-cert.pem": nil},
			wantRoot: cert,
		},
		"no key is not a self-signed CA": {
			data:    map[string][]byte{"ca-cert.pem": cert},
			wantErr: "lacks ca-cert.pem or ca-key.pem",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := selfSignedBundle("istio-system", tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b.RootCert, tc.wantRoot) || !bytes.Equal(b.CertChain, cert) || !bytes.Equal(b.CAKey, key) {
				t.Error("the bundle does not keep the self-signed CA signing with its exact root bytes")
			}
			if err := bundle.Validate(b, time.Now()); err != nil {
				t.Errorf("istiod would reject the bundle: %v", err)
			}
		})
	}
}

func TestUnitExpiring(t *testing.T) {
	now := time.Now()
	root, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256, Now: now.Add(-time.Hour), Lifetime: 10 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "c", KeyType: pki.ECDSAP256, Now: now.Add(-time.Hour), Lifetime: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.FromCA(root, inter)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		deadline time.Time
		want     []string
	}{
		"nothing expires before the intermediate":      {now, nil},
		"the intermediate expires first":               {now.Add(2 * time.Hour), []string{"intermediate"}},
		"both, once past the root's end, even expired": {now.Add(20 * time.Hour), []string{"intermediate", "root"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, first, err := expiring(b, tc.deadline)
			if err != nil {
				t.Fatal(err)
			}
			if !first.Equal(inter.Cert.NotAfter) {
				t.Errorf("first expiry %s, want the intermediate's %s", first, inter.Cert.NotAfter)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("expiring = %v, want %v", got, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(got[i], w+" ") {
					t.Errorf("expiring[%d] = %q, want the %s", i, got[i], w)
				}
			}
		})
	}
}
