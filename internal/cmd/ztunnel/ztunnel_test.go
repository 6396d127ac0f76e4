package ztunnel

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
	"github.com/meshca/meshca/internal/proxy"
)

var now = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

// The dumps and goldens of internal/proxy: this command must print exactly
// what the printer prints.
const (
	reference = "../../proxy/testdata/reference/ztunnel-1.28.1-admin-test_dump_certs.json"
	rotation  = "../../proxy/testdata/fixtures/ztunnel-rotation.json"
	envoyDump = "../../proxy/testdata/reference/envoy-SecretsConfigDump-extract.json"
	goldenDir = "../../proxy/testdata/golden"
)

type result struct {
	out, err string
	code     int
	error    error
}

// run executes `meshca ztunnel ARGS` the way internal/app wires commands:
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
	root.SetArgs(append([]string{"ztunnel"}, args...))
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
// fast and show which pod they tried.
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
		"a saved dump prints the table istioctl users know": {
			args: []string{"certs", "-f", reference},
			out:  readFile(t, filepath.Join(goldenDir, "ztunnel-reference.table")),
		},
		"the certificates alias and -o wide add fingerprints": {
			args: []string{"certificates", "-f", rotation, "-o", "wide"},
			out:  readFile(t, filepath.Join(goldenDir, "ztunnel-rotation.wide")),
			errOut: []string{
				"Warning: spiffe://cluster.local/ns/ambient/sa/a: rootCerts holds 3 entries for 2 distinct roots (1 duplicates); trust is compared as a set\n",
			},
		},
		"no source is a usage error": {
			args: []string{"certs"},
			code: cli.ExitUsage,
			err:  []string{"name exactly one of POD, --node NODE or -f FILE"},
		},
		"a pod and a file together are a usage error": {
			args: []string{"certs", "ztunnel-abc", "-f", reference},
			code: cli.ExitUsage,
			err:  []string{"name exactly one of POD, --node NODE or -f FILE"},
		},
		"a node and a file together are a usage error": {
			args: []string{"certs", "--node", "n1", "-f", reference},
			code: cli.ExitUsage,
		},
		"an unknown output format is a usage error": {
			args: []string{"certs", "-f", reference, "-o", "xml"},
			code: cli.ExitUsage,
			err:  []string{`unknown output format "xml": use one of table|wide|json|yaml`},
		},
		"an impossible port is a usage error": {
			args: []string{"certs", "-f", reference, "--port", "0"},
			code: cli.ExitUsage,
		},
		"an unknown flag is a usage error": {
			args: []string{"certs", "--nodes", "n1"},
			code: cli.ExitUsage,
		},
		"an unknown subcommand is refused": {
			args: []string{"cert"},
			code: cli.ExitFailure,
			err:  []string{`unknown command "cert" for "meshca ztunnel"`},
		},
		"an envoy dump is refused, naming the file and the right command": {
			args: []string{"certs", "-f", envoyDump},
			code: cli.ExitFailure,
			err:  []string{"file " + envoyDump + ": ztunnel config dump: this is an envoy config dump: use `meshca proxy certs`"},
		},
		"malformed stdin is refused, naming stdin": {
			args:  []string{"certs", "-f", "-"},
			stdin: `{"certificates": [{"identity": "spiffe://td/ns/a/sa/b", "state": "Available", "certChain": [{"pem": "LS0tLS1CRUdJTi"}]}]}`,
			code:  cli.ExitFailure,
			err:   []string{"stdin: ztunnel identity spiffe://td/ns/a/sa/b: certChain[0]: pem"},
		},
		"a missing file is an error": {
			args: []string{"certs", "-f", "no-such-dump.json"},
			code: cli.ExitFailure,
			err:  []string{"no-such-dump.json"},
		},
		"a ztunnel with nothing to verify prints the header and says so": {
			args:   []string{"certs", "-f", "-"},
			stdin:  `{"certificates": []}`,
			out:    "CERTIFICATE NAME     TYPE     STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER     NOT BEFORE\n",
			errOut: []string{"Warning: ztunnel holds no certificates (no ambient workloads on its node): nothing to verify\n"},
		},
		"a live read looks in istio-system and names the pod": {
			args: []string{"--kubeconfig", kubeconfig, "certs", "ztunnel-abc"},
			code: cli.ExitFailure,
			err:  []string{"pod istio-system/ztunnel-abc: get pod:"},
		},
		"-n chooses the namespace of a live read": {
			args: []string{"--kubeconfig", kubeconfig, "-n", "kube-system", "certs", "ztunnel-abc"},
			code: cli.ExitFailure,
			err:  []string{"pod kube-system/ztunnel-abc: get pod:"},
		},
		"--node looks the ztunnel up on the node": {
			args: []string{"--kubeconfig", kubeconfig, "certs", "--node", "worker-3"},
			code: cli.ExitFailure,
			err:  []string{`list pods "app=ztunnel" on node worker-3`},
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

func TestCertsJSONFromStdin(t *testing.T) {
	r := run(t, readFile(t, reference), "certs", "-f", "-", "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %v", r.code, r.error)
	}
	var doc proxy.ZtunnelDoc
	if err := json.Unmarshal([]byte(r.out), &doc); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, id := range doc.Identities {
		ids = append(ids, id.Identity+" "+id.Status)
	}
	want := []string{
		"spiffe://error/ns/forgotten/sa/sa-failed Unavailable",
		"spiffe://test/ns/test/sa/sa-pending Initializing",
		"spiffe://trust_domain/ns/namespace/sa/sa-0 Available",
		"spiffe://trust_domain/ns/namespace/sa/sa-1 Available",
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("identities (-want +got):\n%s", diff)
	}
	if doc.APIVersion != proxy.APIVersion || doc.Kind != proxy.KindZtunnel || doc.Source != "stdin" {
		t.Errorf("header = %s %s %s", doc.APIVersion, doc.Kind, doc.Source)
	}
}
