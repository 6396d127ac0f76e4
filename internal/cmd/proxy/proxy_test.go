package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/cli"
	dump "github.com/meshca/meshca/internal/proxy"
)

var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// The dumps and goldens of internal/proxy: this command must print exactly
// what the printer prints.
const (
	reference   = "../../proxy/testdata/reference/envoy-SecretsConfigDump-extract.json"
	camel       = "../../proxy/testdata/fixtures/envoy-rotation-camel.json"
	configDump  = "../../proxy/testdata/fixtures/envoy-configdump.json"
	ztunnelDump = "../../proxy/testdata/reference/ztunnel-1.28.1-admin-test_dump_certs.json"
	goldenDir   = "../../proxy/testdata/golden"
)

type result struct {
	out, err string
	code     int
	error    error
}

// run executes `meshca proxy ARGS` the way internal/app wires commands:
// global kube flags, flag errors as usage errors, the injected clock.
func run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := &cli.Env{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut},
		Kube:    genericclioptions.NewConfigFlags(true),
		Now:     func() time.Time { return now },
	}
	root := &cobra.Command{Use: "meshca", SilenceUsage: true, SilenceErrors: true}
	env.Kube.AddFlags(root.PersistentFlags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Exit(cli.ExitUsage, err) })
	root.SetIn(env.Streams.In)
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.AddCommand(NewCmd(env))
	root.SetArgs(append([]string{"proxy"}, args...))
	err := root.ExecuteContext(context.Background())
	return result{out: out.String(), err: errOut.String(), code: cli.Code(err), error: err}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// unreachableKubeconfig points at a closed port, so that live reads fail
// fast and show which pod they tried. Its context's namespace is "apps".
func unreachableKubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "http://127.0.0.1:1"}
contexts:
- name: x
  context: {cluster: c, namespace: apps}
current-context: x
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCerts(t *testing.T) {
	kubeconfig := unreachableKubeconfig(t)
	tests := map[string]struct {
		args   []string
		stdin  string
		code   int
		out    string
		errOut []string
		err    []string
	}{
		"a saved secrets dump prints the table of istioctl pc secret": {
			args: []string{"certs", "-f", reference},
			out:  readFile(t, filepath.Join(goldenDir, "envoy-reference.table")),
		},
		"istioctl -o json output lists every root, with fingerprints in wide": {
			args: []string{"certs", "-f", camel, "-o", "wide"},
			out:  readFile(t, filepath.Join(goldenDir, "envoy-rotation-camel.wide")),
		},
		"a whole config_dump from stdin is read": {
			args:  []string{"secret", "-f", "-"},
			stdin: readFile(t, configDump),
			out:   readFile(t, filepath.Join(goldenDir, "envoy-configdump.table")),
		},
		"a proxy without secrets says so and warns": {
			args:  []string{"certs", "-f", "-"},
			stdin: `{}`,
			out:   "No active or warming secrets found.\n",
			errOut: []string{
				"Warning: no active default secret: the proxy holds no workload certificate yet\n",
				"Warning: no active ROOTCA secret: the proxy trusts no mesh root yet\n",
			},
		},
		"no source is a usage error": {
			args: []string{"certs"},
			code: cli.ExitUsage,
			err:  []string{"name exactly one of POD or -f FILE"},
		},
		"a pod and a file together are a usage error": {
			args: []string{"certs", "productpage", "-f", reference},
			code: cli.ExitUsage,
		},
		"an unknown output format is a usage error": {
			args: []string{"certs", "-f", reference, "-o", "csv"},
			code: cli.ExitUsage,
		},
		"a non-positive timeout is a usage error": {
			args: []string{"certs", "-f", reference, "--timeout", "0s"},
			code: cli.ExitUsage,
		},
		"a ztunnel dump is refused, naming the file and the right command": {
			args: []string{"certs", "-f", ztunnelDump},
			code: cli.ExitFailure,
			err:  []string{"file " + ztunnelDump + ": envoy config dump: a JSON array is not an envoy dump (ztunnel's certificates array? use `meshca ztunnel certs`)"},
		},
		"truncated base64 is refused, naming the secret": {
			args:  []string{"certs", "-f", "-"},
			stdin: `{"dynamic_active_secrets": [{"name": "ROOTCA", "secret": {"validation_context": {"trusted_ca": {"inline_bytes": "LS0tLS1CRUdJTiBDRVJU"}}}}]}`,
			code:  cli.ExitFailure,
			err:   []string{"stdin: envoy secret ROOTCA (active): validation_context.trusted_ca"},
		},
		"a live read uses the namespace of the kubeconfig context": {
			args: []string{"--kubeconfig", kubeconfig, "certs", "productpage-v1"},
			code: cli.ExitFailure,
			err:  []string{"pod apps/productpage-v1: get pod:"},
		},
		"-n chooses the namespace of a live read": {
			args: []string{"--kubeconfig", kubeconfig, "-n", "bookinfo", "certs", "productpage-v1"},
			code: cli.ExitFailure,
			err:  []string{"pod bookinfo/productpage-v1: get pod:"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := run(t, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d (error: %v)", r.code, tc.code, r.error)
			}
			if diff := cmp.Diff(tc.out, r.out); diff != "" {
				t.Errorf("stdout (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(strings.Join(tc.errOut, ""), r.err); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			for _, e := range tc.err {
				if r.error == nil || !strings.Contains(r.error.Error(), e) {
					t.Errorf("error %v does not contain %q", r.error, e)
				}
			}
		})
	}
}

func TestCertsJSON(t *testing.T) {
	r := run(t, "", "certs", "-f", camel, "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %v", r.code, r.error)
	}
	var doc dump.EnvoyDoc
	if err := json.Unmarshal([]byte(r.out), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Kind != dump.KindEnvoy || doc.Source != "file "+camel {
		t.Errorf("header = %s %s", doc.Kind, doc.Source)
	}
	if len(doc.Workload.Trust.Roots) != 2 || doc.Workload.Signer == "" || doc.Workload.Anchor == "" {
		t.Errorf("workload = %+v, want two roots, a signer and an anchor", doc.Workload)
	}
}
