package mesh

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/pki"
	dump "github.com/meshca/meshca/internal/proxy"
)

func startAgent(t *testing.T, opts AgentOptions) *Agent {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.Kind == "" {
		opts.Kind = KindWaypoint
	}
	if opts.Namespace == "" {
		opts.Namespace = "ambient"
	}
	if opts.Pod == "" {
		opts.Pod = "waypoint-7d9f-abcde"
	}
	if opts.Identity == (Identity{}) {
		opts.Identity = ident("waypoint")
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff = 50 * time.Millisecond
		opts.MaxRetryBackoff = 200 * time.Millisecond
	}
	a, err := StartAgent(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

func hasCert(a *Agent) bool { return a.Certificate() != nil }

// sortedRootsPEM is ROOTCA as istio-agent builds it, computed independently:
// distinct PEM blocks sorted as strings.
func sortedRootsPEM(certs ...[]byte) []string {
	seen := map[string]bool{}
	var out []string
	for _, c := range certs {
		s := string(c)
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

func pemsOf(t *testing.T, certs []*x509.Certificate) []string {
	t.Helper()
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = string(pki.EncodeCert(c))
	}
	return out
}

// findSecretsDump returns the SecretsConfigDump among a config_dump's
// configs.
func findSecretsDump(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var top struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	for _, c := range top.Configs {
		if c["@type"] == secretsConfigDumpType {
			return c
		}
	}
	t.Fatalf("no SecretsConfigDump in %s", body)
	return nil
}

// dropKey removes key from every object of decoded JSON.
func dropKey(v any, key string) any {
	switch x := v.(type) {
	case map[string]any:
		delete(x, key)
		for _, e := range x {
			dropKey(e, key)
		}
	case []any:
		for _, e := range x {
			dropKey(e, key)
		}
	}
	return v
}

func TestAgentServesEnvoySecretsInTheReferenceFormat(t *testing.T) {
	a := newGeneration(t)
	istiod := newFakeIstiod(t, a)
	agent := startAgent(t, AgentOptions{CA: istiod.client(), TrustPEM: a.rootPEM, Node: "node-1"})
	eventually(t, 20*time.Second, "the agent holds a certificate", func() bool { return hasCert(agent) })

	body := httpGet(t, "http://"+agent.AdminAddr()+"/config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets")
	secrets := findSecretsDump(t, body)
	ref := readReference(t, "envoy-SecretsConfigDump-extract.json")
	// The extract was taken without version_info, which envoy prints for
	// SDS secrets; compare the rest.
	if diff := cmp.Diff(shape(ref), shape(dropKey(secrets, "version_info"))); diff != "" {
		t.Errorf("SecretsConfigDump shape differs from envoy's (-reference +simulated):\n%s", diff)
	}

	var typed envoySecretsDump
	raw, _ := json.Marshal(secrets)
	if err := json.Unmarshal(raw, &typed); err != nil {
		t.Fatal(err)
	}
	cert := agent.Certificate()
	got := map[string]string{}
	for _, s := range typed.DynamicActiveSecrets {
		switch {
		case s.Secret.TLSCertificate != nil:
			got[s.Name+" chain"] = decodeB64(t, s.Secret.TLSCertificate.CertificateChain.InlineBytes)
			got[s.Name+" key"] = decodeB64(t, s.Secret.TLSCertificate.PrivateKey.InlineBytes)
		case s.Secret.ValidationContext != nil:
			got[s.Name+" roots"] = decodeB64(t, s.Secret.ValidationContext.TrustedCA.InlineBytes)
		}
		if _, err := time.Parse(time.RFC3339Nano, s.LastUpdated); err != nil {
			t.Errorf("%s: last_updated %q: %v", s.Name, s.LastUpdated, err)
		}
	}
	want := map[string]string{
		"default chain": string(pki.EncodeCerts(cert.Chain...)),
		"default key":   "[redacted]",
		"ROOTCA roots":  string(a.rootPEM),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("secrets (-want +got):\n%s", diff)
	}

	for _, path := range []string{"/config_dump?mask=dynamic_active_secrets,dynamic_warming_secrets", "/config_dump"} {
		e, err := dump.ReadEnvoy(httpGet(t, "http://"+agent.AdminAddr()+path))
		if err != nil {
			t.Fatalf("internal/proxy cannot read %s: %v", path, err)
		}
		w := e.Workload()
		if w.Name != ident("waypoint").String() || len(w.Chain) != 3 || len(w.Roots) != 1 {
			t.Errorf("%s: internal/proxy read identity %s with %d chain certs and %d roots", path, w.Name, len(w.Chain), len(w.Roots))
		}
	}
}

func decodeB64(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("inline_bytes is not base64: %v", err)
	}
	return string(b)
}

func TestAgentRootCAIsDeduplicatedAndSortedByPEM(t *testing.T) {
	a, b := newGeneration(t), newGeneration(t)
	istiod := newFakeIstiod(t, a)
	istiod.set(a.inter, a.chainPEM, concat(b.rootPEM, a.rootPEM, b.rootPEM, a.rootPEM))
	agent := startAgent(t, AgentOptions{CA: istiod.client(), TrustPEM: a.rootPEM})
	eventually(t, 20*time.Second, "the agent holds a certificate", func() bool { return hasCert(agent) })
	want := sortedRootsPEM(a.rootPEM, b.rootPEM)
	if diff := cmp.Diff(want, pemsOf(t, agent.RootCA())); diff != "" {
		t.Errorf("ROOTCA (-want +got):\n%s", diff)
	}
	body, err := agent.SecretsDump()
	if err != nil {
		t.Fatal(err)
	}
	var d envoySecretsDump
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	for _, s := range d.DynamicActiveSecrets {
		if s.Name == SecretRootCA {
			if got := decodeB64(t, s.Secret.ValidationContext.TrustedCA.InlineBytes); got != want[0]+want[1] {
				t.Errorf("ROOTCA inline_bytes is not the two distinct roots in PEM order")
			}
		}
	}
}

// TestAgentFollowsPCDSOnlyWhenLive: with PCDS live a changed bundle updates
// ROOTCA and re-signs at once; without it the push is ignored and new roots
// arrive with the refresh at half-life (facts §2, §4).
func TestAgentFollowsPCDSOnlyWhenLive(t *testing.T) {
	tests := []struct {
		name string
		pcds bool
		ttl  time.Duration
		// signer after the switch: the new intermediate (issue phase) or
		// the old one with both roots (trust phase).
		newSigner   bool
		wantApplied bool
	}{
		{name: "with PCDS live a new bundle re-signs at once under the new signer", pcds: true, ttl: time.Hour, newSigner: true, wantApplied: true},
		{name: "without PCDS the push is ignored and the new roots come with the refresh", pcds: false, ttl: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newGeneration(t), newGeneration(t)
			istiod := newFakeIstiod(t, a)
			agent := startAgent(t, AgentOptions{CA: istiod.client(), TrustPEM: a.rootPEM, PCDS: tt.pcds, SecretTTL: tt.ttl})
			eventually(t, 20*time.Second, "the agent holds a certificate", func() bool { return hasCert(agent) })
			first := agent.Certificate().Leaf()
			if applied, err := agent.PushTrustBundle(a.rootPEM); err != nil || applied {
				t.Fatalf("pushing the unchanged bundle: applied %v, err %v", applied, err)
			}

			roots := concat(a.rootPEM, b.rootPEM)
			signer, chain := a.inter, a.chainPEM
			if tt.newSigner {
				roots = concat(roots, b.rootPEM)
				signer, chain = b.inter, b.chainPEM
			}
			istiod.set(signer, chain, roots)
			applied, err := agent.PushTrustBundle(roots)
			if err != nil {
				t.Fatal(err)
			}
			if applied != tt.wantApplied {
				t.Errorf("push applied = %v, want %v", applied, tt.wantApplied)
			}
			want := sortedRootsPEM(a.rootPEM, b.rootPEM)
			eventually(t, 20*time.Second, "ROOTCA holds both roots and the certificate is renewed", func() bool {
				c := agent.Certificate()
				return cmp.Equal(want, pemsOf(t, agent.RootCA())) && c.Leaf().SerialNumber.Cmp(first.SerialNumber) != 0
			})
			leaf := agent.Certificate().Leaf()
			if err := leaf.CheckSignatureFrom(signer.Cert); err != nil {
				t.Errorf("renewed leaf is not from the expected signer %s: %v", describe(signer.Cert), err)
			}
			half := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) / 2)
			if tt.pcds && !leaf.NotBefore.Before(half) {
				t.Errorf("with PCDS the re-sign came only at half-life (%s)", leaf.NotBefore)
			}
			if !tt.pcds && leaf.NotBefore.Before(half) {
				t.Errorf("without PCDS the certificate was renewed at %s, before its half-life %s", leaf.NotBefore, half)
			}
			if e := agent.LastError(); e != "" {
				t.Errorf("last error: %s", e)
			}
		})
	}
}
