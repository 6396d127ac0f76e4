package mesh

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	dump "github.com/meshca/meshca/internal/proxy"
)

// startZtunnel starts a ztunnel stopped at the end of the test.
func startZtunnel(t *testing.T, opts ZtunnelOptions) *Ztunnel {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = 50 * time.Millisecond
		opts.MaxRetryBackoff = 200 * time.Millisecond
	}
	z, err := StartZtunnel(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(z.Stop)
	return z
}

func setIdentities(t *testing.T, z *Ztunnel, ids ...Identity) {
	t.Helper()
	if err := z.SetIdentities(ids); err != nil {
		t.Fatal(err)
	}
}

// allAvailable reports whether every identity of z is Available.
func allAvailable(z *Ztunnel) bool {
	for _, st := range z.Identities() {
		if st.State != StateAvailable {
			return false
		}
	}
	return true
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	return body
}

func readReference(t *testing.T, name string) any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "reference", name))
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// shape reduces decoded JSON to its structure: objects keep their keys,
// arrays become the merged shape of their elements, scalars their type.
func shape(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = shape(e)
		}
		return m
	case []any:
		var acc any
		for _, e := range x {
			acc = mergeShape(acc, shape(e))
		}
		if acc == nil {
			return []any{}
		}
		return []any{acc}
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	}
	return "null"
}

func mergeShape(a, b any) any {
	if a == nil {
		return b
	}
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		out := map[string]any{}
		for k, v := range am {
			out[k] = v
		}
		for k, v := range bm {
			out[k] = mergeShape(out[k], v)
		}
		return out
	}
	aa, aok := a.([]any)
	ba, bok := b.([]any)
	if aok && bok {
		switch {
		case len(aa) == 0:
			return ba
		case len(ba) == 0:
			return aa
		}
		return []any{mergeShape(aa[0], ba[0])}
	}
	return a
}

var (
	decimalRE = regexp.MustCompile(`^[0-9]+$`)
	rfc3339Z  = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$`)
)

// checkZtunnelCertValues checks the value formats of every certificate of a
// decoded certificates array (facts §3).
func checkZtunnelCertValues(t *testing.T, label string, entries any) {
	t.Helper()
	for _, e := range entries.([]any) {
		entry := e.(map[string]any)
		for _, field := range []string{"certChain", "rootCerts"} {
			for _, c := range entry[field].([]any) {
				cert := c.(map[string]any)
				text, err := base64.StdEncoding.DecodeString(cert["pem"].(string))
				if err != nil || !strings.HasPrefix(string(text), "-----BEGIN CERTIFICATE-----") {
					t.Errorf("%s %s: pem is not base64 of PEM (%v)", label, entry["identity"], err)
				}
				if !decimalRE.MatchString(cert["serialNumber"].(string)) {
					t.Errorf("%s %s: serialNumber %q is not decimal", label, entry["identity"], cert["serialNumber"])
				}
				for _, k := range []string{"validFrom", "expirationTime"} {
					if !rfc3339Z.MatchString(cert[k].(string)) {
						t.Errorf("%s %s: %s %q is not RFC 3339 with Z", label, entry["identity"], k, cert[k])
					}
				}
			}
		}
	}
}

func TestZtunnelServesConfigDumpInZtunnelsFormat(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	z := startZtunnel(t, ZtunnelOptions{Node: "node-1", CA: istiod.client(), TrustPEM: a.rootPEM})
	idA, idB := ident("a"), ident("b")
	setIdentities(t, z, idB, idA)
	eventually(t, 20*time.Second, "both identities are Available", func() bool { return len(z.Identities()) == 2 && allAvailable(z) })

	body := httpGet(t, "http://"+z.AdminAddr()+"/config_dump")
	var top map[string]any
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	wantKeys := []string{"certificates", "config", "policies", "services", "stagedServices", "staticConfig", "version", "workloads"}
	if diff := cmp.Diff(wantKeys, keys); diff != "" {
		t.Errorf("top-level keys (-want +got):\n%s", diff)
	}

	ref := readReference(t, "ztunnel-1.28.1-admin-test_dump_certs.json")
	if diff := cmp.Diff(shape(ref), shape(top["certificates"])); diff != "" {
		t.Errorf("certificates shape differs from ztunnel's own dump (-reference +simulated):\n%s", diff)
	}
	checkZtunnelCertValues(t, "reference", ref)
	checkZtunnelCertValues(t, "simulated", top["certificates"])

	// Exact content: sorted by identity; chain = leaf + cert-chain.pem
	// (intermediate and root); rootCerts = root-cert.pem.
	var got struct {
		Certificates []ztunnelCertsDump `json:"certificates"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	var want []ztunnelCertsDump
	for _, st := range z.Identities() {
		want = append(want, ztunnelCertsDump{
			Identity:  st.Identity.String(),
			State:     StateAvailable,
			CertChain: []ztunnelCert{dumpZtunnelCert(st.Cert.Leaf()), dumpZtunnelCert(a.inter.Cert), dumpZtunnelCert(a.root.Cert)},
			RootCerts: []ztunnelCert{dumpZtunnelCert(a.root.Cert)},
		})
	}
	if diff := cmp.Diff(want, got.Certificates); diff != "" {
		t.Errorf("certificates (-want +got):\n%s", diff)
	}
	if got.Certificates[0].Identity != idA.String() {
		t.Errorf("certificates are not sorted by identity: first is %s", got.Certificates[0].Identity)
	}
	leaf := z.Identities()[0].Cert.Leaf()
	if c := got.Certificates[0].CertChain[0]; c.SerialNumber != leaf.SerialNumber.String() || c.ExpirationTime != leaf.NotAfter.UTC().Format(time.RFC3339) {
		t.Errorf("leaf entry %+v does not match the certificate (serial %s)", c, leaf.SerialNumber)
	}

	// meshca's own reader understands it.
	read, err := dump.ReadZtunnel(body)
	if err != nil {
		t.Fatalf("internal/proxy cannot read the dump: %v", err)
	}
	if len(read.Identities) != 2 || len(read.Identities[0].Chain) != 3 || len(read.Identities[0].Roots) != 1 || read.Legacy() {
		t.Errorf("internal/proxy read %d identities (chain %d, roots %d, legacy %v)", len(read.Identities),
			len(read.Identities[0].Chain), len(read.Identities[0].Roots), read.Legacy())
	}
}

func TestZtunnelWithoutWorkloadsHasAnEmptyCertificatesArray(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	z := startZtunnel(t, ZtunnelOptions{Node: "node-empty", CA: istiod.client(), TrustPEM: a.rootPEM})
	var top map[string]json.RawMessage
	if err := json.Unmarshal(httpGet(t, "http://"+z.AdminAddr()+"/config_dump"), &top); err != nil {
		t.Fatal(err)
	}
	if got := string(top["certificates"]); got != "[]" {
		t.Errorf("certificates = %s, want []", got)
	}
}

func TestZtunnelReportsStatesAsZtunnelDoes(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiod := newFakeIstiod(t, a)
	tests := []struct {
		name       string
		trust      []byte
		wantPrefix string
	}{
		{name: "an identity whose CSR succeeds becomes Available", trust: a.rootPEM, wantPrefix: StateAvailable},
		{name: "an identity whose CSR fails becomes Unavailable with the reason", trust: b.rootPEM, wantPrefix: StateUnavailablePrefix + "CSR for " + ident("x").String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := startZtunnel(t, ZtunnelOptions{Node: "node-1", CA: istiod.client(), TrustPEM: tt.trust})
			setIdentities(t, z, ident("x"))
			if st := z.Identities()[0].State; st != StateInitializing && !strings.HasPrefix(st, tt.wantPrefix) {
				t.Errorf("first state %q, want Initializing", st)
			}
			eventually(t, 20*time.Second, "the state starts with "+tt.wantPrefix, func() bool {
				return strings.HasPrefix(z.Identities()[0].State, tt.wantPrefix)
			})
		})
	}
}

func TestZtunnelRefreshesAtHalfLife(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	z := startZtunnel(t, ZtunnelOptions{Node: "node-1", CA: istiod.client(), TrustPEM: a.rootPEM, SecretTTL: 2 * time.Second})
	setIdentities(t, z, ident("a"))
	eventually(t, 20*time.Second, "the identity is Available", func() bool { return allAvailable(z) })
	first := z.Identities()[0].Cert.Leaf()
	if got := first.NotAfter.Sub(first.NotBefore); got != 2*time.Second {
		t.Fatalf("requested SECRET_TTL 2s, certificate lives %s", got)
	}
	eventually(t, 20*time.Second, "the certificate is renewed", func() bool {
		c := z.Identities()[0].Cert
		return c != nil && c.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0
	})
	second := z.Identities()[0].Cert.Leaf()
	if half := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) / 2); second.NotBefore.Before(half) {
		t.Errorf("renewed certificate issued at %s, before the half-life %s of the first", second.NotBefore, half)
	}
	if !second.NotBefore.Before(first.NotAfter) {
		t.Errorf("renewed certificate issued at %s, not before the first expired at %s", second.NotBefore, first.NotAfter)
	}
	if st := z.Identities()[0].State; st != StateAvailable {
		t.Errorf("state after renewal = %q", st)
	}
}

func TestZtunnelKeepsDuplicateRootsFromTheResponse(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiod := newFakeIstiod(t, a)
	istiod.set(a.inter, a.chainPEM, concat(a.rootPEM, b.rootPEM, b.rootPEM))
	z := startZtunnel(t, ZtunnelOptions{Node: "node-1", CA: istiod.client(), TrustPEM: a.rootPEM})
	setIdentities(t, z, ident("a"))
	eventually(t, 20*time.Second, "the identity is Available", func() bool { return allAvailable(z) })
	var got struct {
		Certificates []ztunnelCertsDump `json:"certificates"`
	}
	if err := json.Unmarshal(httpGet(t, "http://"+z.AdminAddr()+"/config_dump"), &got); err != nil {
		t.Fatal(err)
	}
	want := []ztunnelCert{dumpZtunnelCert(a.root.Cert), dumpZtunnelCert(b.root.Cert), dumpZtunnelCert(b.root.Cert)}
	if diff := cmp.Diff(want, got.Certificates[0].RootCerts); diff != "" {
		t.Errorf("rootCerts for old + new + new (-want +got):\n%s", diff)
	}
}

// TestZtunnel128TrustIsFixedAtStart: once istiod serves from a chain under a
// new root, a 1.28 ztunnel started before the new root reached the ConfigMap
// cannot reach istiod any more and its identities go Unavailable when their
// certificates expire; a 1.30 ztunnel, or a restarted 1.28 one, recovers
// (facts §3, ztunnel#1679).
func TestZtunnel128TrustIsFixedAtStart(t *testing.T) {
	tests := []struct {
		name string
		// after the switch to the new signer: restart the ztunnel with the
		// ConfigMap's current bytes.
		restart    bool
		watcher    bool
		wantIssuer bool // recovers with a leaf from the new intermediate
	}{
		{name: "a 1.28 ztunnel started before the new root loses its identities"},
		{name: "a 1.30 ztunnel re-reads the ConfigMap and recovers", watcher: true, wantIssuer: true},
		{name: "a 1.28 ztunnel restarted after the ConfigMap update recovers", restart: true, wantIssuer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newGeneration(t), newGeneration(t)
			istiod := newFakeIstiod(t, a)
			configMap := &syncBytes{b: a.rootPEM}
			opts := ZtunnelOptions{
				Node: "node-1", CA: istiod.client(), TrustPEM: configMap.get(), SecretTTL: 2 * time.Second,
				CACertWatcher: tt.watcher,
				ReloadTrust:   func(context.Context) ([]byte, error) { return configMap.get(), nil },
			}
			z := startZtunnel(t, opts)
			setIdentities(t, z, ident("a"), ident("b"))
			eventually(t, 20*time.Second, "both identities are Available", func() bool { return allAvailable(z) })

			// Issue phase: new signer under the new root; root-cert.pem and
			// the ConfigMap carry old + new + new.
			roots := concat(a.rootPEM, b.rootPEM, b.rootPEM)
			istiod.set(b.inter, b.chainPEM, roots)
			configMap.set(roots)
			if tt.restart {
				z.Stop()
				opts.TrustPEM = configMap.get()
				z = startZtunnel(t, opts)
				setIdentities(t, z, ident("a"), ident("b"))
			}

			if !tt.wantIssuer {
				eventually(t, 30*time.Second, "every identity is Unavailable", func() bool {
					for _, st := range z.Identities() {
						if !strings.HasPrefix(st.State, StateUnavailablePrefix) || !strings.Contains(st.State, "x509") {
							return false
						}
					}
					return true
				})
				return
			}
			eventually(t, 30*time.Second, "every leaf comes from the new intermediate", func() bool {
				for _, st := range z.Identities() {
					if st.State != StateAvailable || st.Cert.Leaf().CheckSignatureFrom(b.inter.Cert) != nil {
						return false
					}
				}
				return true
			})
			if got := len(z.Identities()[0].Cert.Roots); got != 3 {
				t.Errorf("rootCerts after the switch: %d, want 3 (old + new + new)", got)
			}
		})
	}
}

// syncBytes is a ConfigMap's root-cert.pem that the test changes.
type syncBytes struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBytes) get() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b
}

func (s *syncBytes) set(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = b
}

func TestZtunnelForgetsRemovedIdentities(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	z := startZtunnel(t, ZtunnelOptions{Node: "node-1", CA: istiod.client(), TrustPEM: a.rootPEM})
	setIdentities(t, z, ident("a"), ident("b"))
	setIdentities(t, z, ident("b"))
	var got []string
	for _, st := range z.Identities() {
		got = append(got, st.Identity.String())
	}
	if diff := cmp.Diff([]string{ident("b").String()}, got); diff != "" {
		t.Errorf("identities (-want +got):\n%s", diff)
	}
	if err := z.SetIdentities([]Identity{{TrustDomain: "cluster.local"}}); err == nil {
		t.Error("an identity without namespace and service account was accepted")
	}
}
