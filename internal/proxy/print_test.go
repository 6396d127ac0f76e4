package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshca/meshca/internal/report"
)

var formats = []report.Format{report.Table, report.Wide, report.JSON}

func TestPrintZtunnelGolden(t *testing.T) {
	tests := map[string]struct {
		file   string
		golden string
	}{
		"ztunnel's own 1.28.1 test dump (reference)":                      {file: "reference/ztunnel-1.28.1-admin-test_dump_certs.json", golden: "ztunnel-reference"},
		"a node mid-rotation with repeated roots and a root in the chain": {file: "fixtures/ztunnel-rotation.json", golden: "ztunnel-rotation"},
		"a legacy ztunnel with raw PEM and no rootCerts":                  {file: "fixtures/ztunnel-legacy.json", golden: "ztunnel-legacy"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			z, err := ReadZtunnel(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range formats {
				var out bytes.Buffer
				if err := PrintZtunnel(&out, z, PrintOptions{Format: f, Now: now, Source: "file " + tc.file}); err != nil {
					t.Fatal(err)
				}
				golden(t, tc.golden+"."+string(f), out.Bytes())
			}
		})
	}
}

func TestPrintEnvoyGolden(t *testing.T) {
	tests := map[string]struct {
		file   string
		golden string
	}{
		"the envoy SecretsConfigDump extract (reference)":    {file: "reference/envoy-SecretsConfigDump-extract.json", golden: "envoy-reference"},
		"istioctl -o json of a sidecar trusting two roots":   {file: "fixtures/envoy-rotation-camel.json", golden: "envoy-rotation-camel"},
		"a gateway's whole config_dump with warming secrets": {file: "fixtures/envoy-configdump.json", golden: "envoy-configdump"},
		"a SPIFFE validator with a bundle per trust domain":  {file: "fixtures/envoy-spiffe.json", golden: "envoy-spiffe"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := ReadEnvoy(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range formats {
				var out bytes.Buffer
				if err := PrintEnvoy(&out, e, PrintOptions{Format: f, Now: now, Source: "file " + tc.file}); err != nil {
					t.Fatal(err)
				}
				golden(t, tc.golden+"."+string(f), out.Bytes())
			}
		})
	}
}

// rows splits a table into its rows of whitespace-separated cells.
func rows(table string) [][]string {
	var out [][]string
	for _, line := range strings.Split(strings.TrimRight(table, "\n"), "\n") {
		out = append(out, strings.Fields(line))
	}
	return out
}

// column returns the cells of column i below the header.
func column(table string, i int) []string {
	var out []string
	for _, r := range rows(table)[1:] {
		out = append(out, r[i])
	}
	return out
}

// TestPrintMatchesIstioctl pins the facts of istioctl's own output: the rows
// below are what istioctl zc certificates and istioctl pc secret print for
// the reference dumps at the test clock (serials in hex, RFC 3339 times,
// Unavailable, NA, VALID CERT, %032x serials for pc secret).
func TestPrintMatchesIstioctl(t *testing.T) {
	tests := map[string]struct {
		file  string
		print func(data []byte, out *bytes.Buffer) error
		want  [][]string
	}{
		"istioctl zc certificates on ztunnel's test dump": {
			file: "reference/ztunnel-1.28.1-admin-test_dump_certs.json",
			print: func(data []byte, out *bytes.Buffer) error {
				z, err := ReadZtunnel(data)
				if err != nil {
					return err
				}
				return PrintZtunnel(out, z, PrintOptions{Now: now})
			},
			want: [][]string{
				{"CERTIFICATE", "NAME", "TYPE", "STATUS", "VALID", "CERT", "SERIAL", "NUMBER", "NOT", "AFTER", "NOT", "BEFORE"},
				{"spiffe://error/ns/forgotten/sa/sa-failed", "NA", "Unavailable", "false", "NA", "NA", "NA"},
				{"spiffe://test/ns/test/sa/sa-pending", "NA", "Initializing", "false", "NA", "NA", "NA"},
				{"spiffe://trust_domain/ns/namespace/sa/sa-0", "Leaf", "Available", "false", "2f96602a12c1e5a2b06ad9dd3251a705e7f004b8", "2023-03-11T12:57:26Z", "2023-03-11T05:57:26Z"},
				{"spiffe://trust_domain/ns/namespace/sa/sa-0", "Root", "Available", "true", "46596d52e9b6426d79b53f73c2eda4a61e2f79d7", "2299-01-17T23:35:46Z", "2025-04-03T23:35:46Z"},
				{"spiffe://trust_domain/ns/namespace/sa/sa-1", "Leaf", "Available", "false", "25417950598dbfd5d7050561d42958e1348a171f", "2023-03-11T13:57:26Z", "2023-03-11T06:57:26Z"},
				{"spiffe://trust_domain/ns/namespace/sa/sa-1", "Root", "Available", "true", "46596d52e9b6426d79b53f73c2eda4a61e2f79d7", "2299-01-17T23:35:46Z", "2025-04-03T23:35:46Z"},
			},
		},
		"istioctl pc secret on the envoy extract": {
			file: "reference/envoy-SecretsConfigDump-extract.json",
			print: func(data []byte, out *bytes.Buffer) error {
				e, err := ReadEnvoy(data)
				if err != nil {
					return err
				}
				return PrintEnvoy(out, e, PrintOptions{Now: now})
			},
			want: [][]string{
				{"RESOURCE", "NAME", "TYPE", "STATUS", "VALID", "CERT", "SERIAL", "NUMBER", "NOT", "AFTER", "NOT", "BEFORE"},
				{"default", "Cert", "Chain", "ACTIVE", "false", "6fbee254c22900615cb1f74e3d2f1713", "2023-05-16T01:32:52Z", "2023-05-15T01:30:52Z"},
				{"ROOTCA", "CA", "ACTIVE", "true", "0193a543fe2b0d9cd4847675394dfc54", "2033-05-02T03:41:33Z", "2023-05-05T03:41:33Z"},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			if err := tc.print(readTestdata(t, tc.file), &out); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, rows(out.String())); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			// istioctl's tabwriter: padding 5, spaces.
			if header := strings.SplitN(out.String(), "\n", 2)[0]; !strings.Contains(header, "     TYPE     ") {
				t.Errorf("header %q is not padded like istioctl's", header)
			}
		})
	}
}

func TestPrintZtunnelTypes(t *testing.T) {
	tests := map[string]struct {
		file string
		want []string
	}{
		"meshca labels what each certificate is, so the root in the chain is a Root": {
			file: "fixtures/ztunnel-rotation.json",
			// a: leaf, int, root (copied) + old, new, new; b: leaf, int, root + old, new; c, d: NA.
			want: []string{"Leaf", "Intermediate", "Root", "Root", "Root", "Root", "Leaf", "Intermediate", "Root", "Root", "Root", "NA", "NA"},
		},
		"a legacy dump is labelled by position exactly as istioctl does": {
			file: "fixtures/ztunnel-legacy.json",
			want: []string{"Leaf", "Intermediate", "Intermediate", "Root", "Leaf", "Intermediate", "Root", "NA"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			z, err := ReadZtunnel(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := PrintZtunnel(&out, z, PrintOptions{Now: now}); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, column(out.String(), 1)); diff != "" {
				t.Errorf("TYPE column (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPrintEnvoyListsEveryRoot(t *testing.T) {
	p := newRotationPKI(t)
	e, err := ReadEnvoy(mustJSON(t, map[string]any{"dynamic_active_secrets": []any{
		envoyTLSSecret("default", p.newLeaf, p.newInt.cert),
		envoyCASecret("ROOTCA", p.oldRoot.cert, p.newRoot.cert),
	}}))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := PrintEnvoy(&out, e, PrintOptions{Format: report.Wide, Now: now}); err != nil {
		t.Fatal(err)
	}
	got := rows(out.String())
	var names, fingerprints []string
	for _, r := range got[1:] {
		names = append(names, r[0])
		fingerprints = append(fingerprints, r[len(r)-1])
	}
	if diff := cmp.Diff([]string{"default", "ROOTCA", "ROOTCA"}, names); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	want := []string{fps(p.newLeaf)[0][:12], fps(p.oldRoot.cert)[0][:12], fps(p.newRoot.cert)[0][:12]}
	if diff := cmp.Diff(want, fingerprints); diff != "" {
		t.Errorf("fingerprints (-want +got):\n%s", diff)
	}
}

func TestPrintEmpty(t *testing.T) {
	tests := map[string]struct {
		print func(*bytes.Buffer) error
		want  string
	}{
		"a ztunnel with nothing to verify prints only the header, as istioctl": {
			print: func(out *bytes.Buffer) error { return PrintZtunnel(out, &Ztunnel{}, PrintOptions{Now: now}) },
			want:  "CERTIFICATE NAME     TYPE     STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER     NOT BEFORE\n",
		},
		"an envoy without secrets says so, as istioctl": {
			print: func(out *bytes.Buffer) error { return PrintEnvoy(out, &Envoy{}, PrintOptions{Now: now}) },
			want:  "No active or warming secrets found.\n",
		},
		"an empty ztunnel is an empty identities list in JSON, never null": {
			print: func(out *bytes.Buffer) error {
				return PrintZtunnel(out, &Ztunnel{}, PrintOptions{Format: report.JSON, Now: now})
			},
			want: `{
  "apiVersion": "meshca.io/v1alpha1",
  "kind": "ZtunnelCertificates",
  "identities": [],
  "warnings": [
    "ztunnel holds no certificates (no ambient workloads on its node): nothing to verify"
  ]
}
`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			if err := tc.print(&out); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, out.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}

// TestZtunnelDocTrust checks the JSON a fleet consumer reads: the trust of
// identity a is a set of two roots with one duplicate, its signer the new
// intermediate and its anchor the new root.
func TestZtunnelDocTrust(t *testing.T) {
	p := newRotationPKI(t)
	z, err := ReadZtunnel(mustJSON(t, []any{map[string]any{"identity": idA, "state": "Available",
		"certChain": ztCerts(false, p.newLeaf, p.newInt.cert, p.newRoot.cert),
		"rootCerts": ztCerts(false, p.oldRoot.cert, p.newRoot.cert, p.newRoot.cert)}}))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := PrintZtunnel(&out, z, PrintOptions{Format: report.JSON, Now: now}); err != nil {
		t.Fatal(err)
	}
	var doc ZtunnelDoc
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	id := doc.Identities[0]
	if diff := cmp.Diff(TrustDoc{Roots: NewTrust(fps(p.oldRoot.cert, p.newRoot.cert)...).Roots, Duplicates: 1}, id.Trust); diff != "" {
		t.Errorf("trust (-want +got):\n%s", diff)
	}
	if id.Signer != fps(p.newInt.cert)[0] || id.Anchor != fps(p.newRoot.cert)[0] {
		t.Errorf("signer %s anchor %s, want the new intermediate and root", id.Signer, id.Anchor)
	}
	if len(id.Certificates) != 6 || id.Certificates[2].Type != "Root" || id.Certificates[2].Field != "certChain" {
		t.Errorf("certificates = %+v", id.Certificates)
	}
}
