package proxy

import (
	"crypto/x509"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestTrust(t *testing.T) {
	tests := map[string]struct {
		trust          Trust
		want           Trust
		has            string
		hasWant        bool
		missing, extra []string
		equal          bool
	}{
		"old, new, new is a set of two with one duplicate": {
			trust:   NewTrust("bb", "aa", "bb"),
			want:    NewTrust("aa", "bb"),
			has:     "BB",
			hasWant: true,
			equal:   true,
		},
		"a proxy that lacks the new root misses it": {
			trust:   NewTrust("aa"),
			want:    NewTrust("aa", "bb"),
			has:     "bb",
			missing: []string{"bb"},
		},
		"a proxy that still holds the old root after retiring has an extra": {
			trust: NewTrust("aa", "bb"),
			want:  NewTrust("bb"),
			has:   "cc",
			extra: []string{"aa"},
		},
		"no roots trusts nothing": {
			trust:   NewTrust(),
			want:    NewTrust("aa"),
			has:     "aa",
			missing: []string{"aa"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.trust.Has(tc.has); got != tc.hasWant {
				t.Errorf("Has(%s) = %v", tc.has, got)
			}
			if got := tc.trust.Equal(tc.want); got != tc.equal {
				t.Errorf("Equal = %v", got)
			}
			missing, extra := tc.trust.Diff(tc.want)
			if diff := cmp.Diff(tc.missing, missing); diff != "" {
				t.Errorf("missing (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.extra, extra); diff != "" {
				t.Errorf("extra (-want +got):\n%s", diff)
			}
		})
	}
	if got := NewTrust("bb", "aa", "bb"); !cmp.Equal(got, Trust{Roots: []string{"aa", "bb"}, Duplicates: 1}) {
		t.Errorf("NewTrust = %+v", got)
	}
}

func TestIdentityChains(t *testing.T) {
	p := newRotationPKI(t)
	stranger := newRoot(t)
	certs := func(cs ...*x509.Certificate) []Cert {
		out := make([]Cert, len(cs))
		for i, c := range cs {
			out[i] = NewCert(c)
		}
		return out
	}
	tests := map[string]struct {
		id       Identity
		signer   *x509.Certificate
		anchor   *x509.Certificate
		anchors  []*x509.Certificate
		chainsTo map[*x509.Certificate]bool
	}{
		"a leaf of the new intermediate chains to the new root only": {
			id:       Identity{Chain: certs(p.newLeaf, p.newInt.cert, p.newRoot.cert), Roots: certs(p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)},
			signer:   p.newInt.cert,
			anchor:   p.newRoot.cert,
			anchors:  []*x509.Certificate{p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert},
			chainsTo: map[*x509.Certificate]bool{p.newRoot.cert: true, p.oldRoot.cert: false, stranger.cert: false},
		},
		"a leaf still under the old intermediate chains to the old root": {
			id:       Identity{Chain: certs(p.oldLeaf, p.oldInt.cert), Roots: certs(p.oldRoot.cert, p.newRoot.cert)},
			signer:   p.oldInt.cert,
			anchor:   p.oldRoot.cert,
			anchors:  []*x509.Certificate{p.oldRoot.cert, p.newRoot.cert},
			chainsTo: map[*x509.Certificate]bool{p.oldRoot.cert: true, p.newRoot.cert: false},
		},
		"a chain without its intermediate has no signer and chains nowhere": {
			id:       Identity{Chain: certs(p.newLeaf), Roots: certs(p.newRoot.cert)},
			anchors:  []*x509.Certificate{p.newRoot.cert},
			chainsTo: map[*x509.Certificate]bool{p.newRoot.cert: false},
		},
		"a leaf signed by the root directly (istiod's self-signed CA) has the root as signer": {
			id:       Identity{Chain: certs(p.oldRoot.leaf(t, idA)), Roots: certs(p.oldRoot.cert)},
			signer:   p.oldRoot.cert,
			anchor:   p.oldRoot.cert,
			anchors:  []*x509.Certificate{p.oldRoot.cert},
			chainsTo: map[*x509.Certificate]bool{p.oldRoot.cert: true},
		},
		"a legacy entry's anchor is its last chain entry": {
			id:       Identity{Legacy: true, Chain: certs(p.oldLeaf, p.oldInt.cert, p.oldRoot.cert)},
			signer:   p.oldInt.cert,
			anchor:   p.oldRoot.cert,
			anchors:  []*x509.Certificate{p.oldRoot.cert},
			chainsTo: map[*x509.Certificate]bool{p.oldRoot.cert: true, p.newRoot.cert: false},
		},
		"a legacy entry with a lone leaf trusts nothing": {
			id:       Identity{Legacy: true, Chain: certs(p.oldLeaf)},
			chainsTo: map[*x509.Certificate]bool{p.oldRoot.cert: false},
		},
		"an identity without a chain has nothing": {
			id:       Identity{State: "Initializing"},
			chainsTo: map[*x509.Certificate]bool{p.oldRoot.cert: false},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got, want := fingerprintOf(tc.id.Signer()), fpOrEmpty(tc.signer); got != want {
				t.Errorf("Signer = %q, want %q", got, want)
			}
			if got, want := fingerprintOf(tc.id.Anchor()), fpOrEmpty(tc.anchor); got != want {
				t.Errorf("Anchor = %q, want %q", got, want)
			}
			if diff := cmp.Diff(fps(tc.anchors...), certFPs(tc.id.Anchors()), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Anchors (-want +got):\n%s", diff)
			}
			for root, want := range tc.chainsTo {
				if got := tc.id.ChainsTo(root); got != want {
					t.Errorf("ChainsTo(%s) = %v, want %v", fpOrEmpty(root)[:12], got, want)
				}
			}
		})
	}
}

func fpOrEmpty(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fps(c)[0]
}
