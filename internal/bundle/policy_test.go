package bundle_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/pki/pkitest"
)

// sourcedBundle is the tools/certs layout of inter under root, sourced "dir".
func sourcedBundle(t *testing.T, root, inter *pki.CA) *bundle.Bundle {
	t.Helper()
	b := pkitest.Bundle(t, root, inter)
	b.Source = "dir"
	return b
}

// TestCheckRefusesCAMaterialTheMeshChokesOn covers what istiod's own load
// check accepts but the mesh cannot use. Unusable material is an error in
// both modes; weak material is an error for a new CA and a warning for the
// bundle in use now, so that meshca can still rotate away from it.
func TestCheckRefusesCAMaterialTheMeshChokesOn(t *testing.T) {
	p256 := func() *pki.CA { return pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), nil) }
	pathlen := func(n int) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = n, n == 0 }
	}
	tests := map[string]struct {
		bundle      func() *bundle.Bundle
		wantMessage string
		wantFix     string
		// unusable: an error even for the bundle in use now.
		unusable bool
	}{
		"a root with pathlen 0 above the signing intermediate": {
			bundle: func() *bundle.Bundle {
				root := pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), pathlen(0))
				return sourcedBundle(t, root, pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), pathlen(0)))
			},
			wantMessage: "has pathlen:0 but leaves signed by",
			wantFix:     "without that constraint",
			unusable:    true,
		},
		"an intermediate whose pathlen blocks the signer's leaves": {
			bundle: func() *bundle.Bundle {
				root := p256()
				mid := pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), pathlen(0))
				signer := pkitest.CA(t, mid, pkitest.Key(t, pki.ECDSAP256), pathlen(0))
				b := sourcedBundle(t, root, signer)
				b.CertChain = pki.EncodeCerts(signer.Cert, mid.Cert, root.Cert)
				return b
			},
			wantMessage: "intermediate \"" + "Test CA",
			wantFix:     "pathlen of at least 1",
			unusable:    true,
		},
		"an RSA-1024 signing key": {
			bundle: func() *bundle.Bundle {
				root := p256()
				return sourcedBundle(t, root, pkitest.CA(t, root, pkitest.RSAKey(t, 1024), pathlen(0)))
			},
			wantMessage: "has an RSA 1024 key: below 2048 bits",
			wantFix:     "--key-type",
		},
		"an RSA-1024 root": {
			bundle: func() *bundle.Bundle {
				root := pkitest.CA(t, nil, pkitest.RSAKey(t, 1024), nil)
				return sourcedBundle(t, root, pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), pathlen(0)))
			},
			wantMessage: "has an RSA 1024 key",
			wantFix:     "RSA 2048-4096 or ECDSA P-256/P-384",
		},
		"an ECDSA P-224 signing key": {
			bundle: func() *bundle.Bundle {
				key, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				root := p256()
				return sourcedBundle(t, root, pkitest.CA(t, root, key, pathlen(0)))
			},
			wantMessage: "has an ECDSA P-224 key: ztunnel (rustls/webpki) verifies only P-256 and P-384",
			wantFix:     "--key-type",
		},
		"an intermediate outliving its root": {
			bundle: func() *bundle.Bundle {
				root := p256()
				return sourcedBundle(t, root, pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
					c.NotAfter = root.Cert.NotAfter.AddDate(1, 0, 0)
				}))
			},
			wantMessage: "after \"Test CA",
			wantFix:     "clamps its validity to the root's",
		},
		"an intermediate expiring before the leaves it would sign": {
			bundle: func() *bundle.Bundle {
				root := p256()
				return sourcedBundle(t, root, pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
					c.NotAfter = pkitest.Now.Add(12 * time.Hour)
				}))
			},
			wantMessage: "in less than the 24h0m0s lifetime of the workload certificates",
			wantFix:     "issue a new intermediate",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := tc.bundle()
			for _, newCA := range []bool{true, false} {
				rep := bundle.Check(b, bundle.CheckOptions{Now: pkitest.Now, NewCA: newCA})
				var got *bundle.Finding
				for i, f := range rep.Findings {
					if strings.Contains(f.Message, tc.wantMessage) {
						got = &rep.Findings[i]
					}
				}
				if got == nil {
					t.Fatalf("NewCA=%v: no finding %q in %v", newCA, tc.wantMessage, rep.Findings)
				}
				if !strings.Contains(got.Fix, tc.wantFix) || !strings.HasPrefix(got.File, "dir/") {
					t.Errorf("NewCA=%v: finding %+v: want a file under dir/ and a fix with %q", newCA, got, tc.wantFix)
				}
				wantSev := bundle.SeverityWarning
				if newCA || tc.unusable {
					wantSev = bundle.SeverityError
				}
				if got.Severity != wantSev {
					t.Errorf("NewCA=%v: severity %s, want %s", newCA, got.Severity, wantSev)
				}
			}
			if err := bundle.ValidateNew(b, pkitest.Now); err == nil || !strings.Contains(err.Error(), "(fix: ") {
				t.Errorf("ValidateNew = %v, want an error with its fix", err)
			}
		})
	}
}

func TestCheckAcceptsTheProfilesMeshcaGenerates(t *testing.T) {
	for _, kt := range []pki.KeyType{pki.RSA2048, pki.ECDSAP256, pki.ECDSAP384} {
		root := pkitest.Root(t, kt)
		b := sourcedBundle(t, root, pkitest.Intermediate(t, root, kt, "east"))
		if err := bundle.ValidateNew(b, pkitest.Now); err != nil {
			t.Errorf("%s: %v", kt, err)
		}
	}
}

func TestLoadRootRefusesRootsTheMeshCannotUse(t *testing.T) {
	tests := map[string]struct {
		dir  func() string
		want string
	}{
		"a root with pathlen 0": {func() string {
			return pkitest.WriteRoot(t, pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) {
				c.MaxPathLen, c.MaxPathLenZero = 0, true
			}))
		}, "has pathlen:0: no intermediate may sit under it"},
		"an RSA-1024 root": {func() string {
			return pkitest.WriteRoot(t, pkitest.CA(t, nil, pkitest.RSAKey(t, 1024), nil))
		}, "has an RSA 1024 key"},
		"a DSA root, named as DSA": {func() string { return pkitest.DSARootDir(t) }, "has a DSA key: istiod (Go crypto/x509) cannot verify or sign with it"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := tc.dir()
			_, err := bundle.LoadRoot(dir, pkitest.Now)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Join(dir, bundle.RootCertFile)) || !strings.Contains(err.Error(), "fix: ") {
				t.Errorf("LoadRoot = %v, want an error naming %s, %q and the fix", err, dir, tc.want)
			}
		})
	}
}

func TestBuildRefusesANewCAThatCannotIssueLeaves(t *testing.T) {
	cur := func() *bundle.Bundle {
		root := pkitest.Root(t, pki.ECDSAP256)
		return sourcedBundle(t, root, pkitest.Intermediate(t, root, pki.ECDSAP256, "east"))
	}()
	root := pkitest.CA(t, nil, pkitest.Key(t, pki.ECDSAP256), func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 0, true })
	next := pkitest.Bundle(t, root, pkitest.CA(t, root, pkitest.Key(t, pki.ECDSAP256), nil))
	next.Source = "new"
	rootOnly := &bundle.Bundle{RootCert: next.RootCert, Source: "new"}
	for _, phase := range []bundle.Phase{bundle.PhaseTrust, bundle.PhaseIssue, bundle.PhaseRetire} {
		for _, n := range []*bundle.Bundle{next, rootOnly} {
			if phase != bundle.PhaseTrust && n == rootOnly {
				continue
			}
			_, err := bundle.Build(phase, cur, n, pkitest.Now)
			if err == nil || !strings.Contains(err.Error(), "pathlen:0") {
				t.Errorf("Build(%s, full=%v) = %v, want the pathlen refusal", phase, n == next, err)
			}
		}
	}
}
