package mesh

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

func TestSplitResponseReadsIstiodsCertChain(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	leaf := pkitest.Leaf(t, a.inter, ident("a").String(), time.Now(), time.Hour).Cert
	leafPEM := string(pki.EncodeCert(leaf))
	fps := pki.Fingerprints
	tests := []struct {
		name      string
		elems     []string
		wantChain []*x509.Certificate
		wantRoots []*x509.Certificate
		wantErr   string
	}{
		{
			name:      "the whole cert-chain.pem in one element and several roots in the last are split",
			elems:     []string{leafPEM, string(a.chainPEM), string(concat(a.rootPEM, b.rootPEM, b.rootPEM))},
			wantChain: []*x509.Certificate{leaf, a.inter.Cert, a.root.Cert},
			wantRoots: []*x509.Certificate{a.root.Cert, b.root.Cert, b.root.Cert},
		},
		{
			name:      "one certificate per middle element is read the same way",
			elems:     []string{leafPEM, string(pki.EncodeCert(a.inter.Cert)), string(pki.EncodeCert(a.root.Cert)), string(a.rootPEM)},
			wantChain: []*x509.Certificate{leaf, a.inter.Cert, a.root.Cert},
			wantRoots: []*x509.Certificate{a.root.Cert},
		},
		{
			name:      "a self-signed istiod sends the leaf and its root only",
			elems:     []string{leafPEM, string(a.rootPEM)},
			wantChain: []*x509.Certificate{leaf},
			wantRoots: []*x509.Certificate{a.root.Cert},
		},
		{
			name:    "a response without roots is refused",
			elems:   []string{leafPEM},
			wantErr: "1 element(s)",
		},
		{
			name:    "a leaf element holding two certificates is refused",
			elems:   []string{leafPEM + leafPEM, string(a.rootPEM)},
			wantErr: "expected the leaf alone",
		},
		{
			name:    "garbage in the roots element is refused with its position",
			elems:   []string{leafPEM, "not PEM"},
			wantErr: "cert_chain[1] (roots)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, roots, rootsPEM, err := splitResponse(tt.elems)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(fps(tt.wantChain), fps(chain)); diff != "" {
				t.Errorf("chain (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(fps(tt.wantRoots), fps(roots)); diff != "" {
				t.Errorf("roots (-want +got):\n%s", diff)
			}
			if got, want := string(rootsPEM), tt.elems[len(tt.elems)-1]; got != want {
				t.Errorf("rootsPEM is not the last element verbatim")
			}
		})
	}
}

func TestCAClientSendsWhatIstiodExpects(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	id := ident("httpbin")
	client := istiod.client()
	client.Impersonate = true
	cert, err := client.Sign(context.Background(), id, 90*time.Minute, []*x509.Certificate{a.root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	_, md, req := istiod.stats()
	got := map[string]any{
		"authorization":    md.Get("authorization"),
		"clusterid":        md.Get("clusterid"),
		"validityDuration": req.GetValidityDuration(),
		"impersonated":     req.GetMetadata().GetFields()[ImpersonatedIdentityKey].GetStringValue(),
		"leafURIs":         pki.SANs(cert.Leaf()),
		"chain":            len(cert.Chain),
		"roots":            len(cert.Roots),
	}
	want := map[string]any{
		"authorization":    []string{"Bearer token-for:" + id.String()},
		"clusterid":        []string{"Kubernetes"},
		"validityDuration": int64(5400),
		"impersonated":     id.String(),
		"leafURIs":         []string{"URI:" + id.String()},
		"chain":            3,
		"roots":            1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request and certificate (-want +got):\n%s", diff)
	}
	if !pki.KeyMatches(cert.Leaf(), cert.Key) {
		t.Error("the leaf does not carry the generated key")
	}
}

func TestCAClientErrorsNameTheIdentityAndAddress(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiod := newFakeIstiod(t, a)
	id := ident("httpbin")
	tests := []struct {
		name   string
		client CAClient
		trust  []*x509.Certificate
		want   []string
	}{
		{
			name:   "trusting another root fails the TLS handshake with istiod",
			client: istiod.client(),
			trust:  []*x509.Certificate{b.root.Cert},
			want:   []string{id.String(), istiod.addr, "x509"},
		},
		{
			name:   "a token istiod refuses is reported",
			client: CAClient{Address: istiod.addr, Token: func(context.Context, Identity) (string, error) { return "bogus", nil }},
			trust:  []*x509.Certificate{a.root.Cert},
			want:   []string{id.String(), istiod.addr, "authenticate"},
		},
		{
			name:   "no trusted root is refused before dialling",
			client: istiod.client(),
			want:   []string{id.String(), "no trusted root"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.client.Sign(context.Background(), id, time.Hour, tt.trust)
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseIdentityRoundTrips(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Identity
		wantErr bool
	}{
		{name: "an Istio SPIFFE ID parses", in: "spiffe://cluster.local/ns/ambient/sa/httpbin", want: ident("httpbin")},
		{name: "a SPIFFE ID of another shape is refused", in: "spiffe://cluster.local/workload/x", wantErr: true},
		{name: "a URL of another scheme is refused", in: "https://cluster.local/ns/a/sa/b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIdentity(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}
