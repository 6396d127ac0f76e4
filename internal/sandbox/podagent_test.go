package sandbox

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExpandArgs(t *testing.T) {
	for name, tc := range map[string]struct {
		args, env, want []string
	}{
		"a reference is replaced by the env value as kubelet does": {
			args: []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"},
			env:  []string{"POD_NAMESPACE=apps-0"},
			want: []string{"proxy", "sidecar", "--domain", "apps-0.svc.cluster.local"},
		},
		"an unknown reference stays as written": {
			args: []string{"$(NOPE)-x"},
			env:  []string{"POD_NAMESPACE=apps-0"},
			want: []string{"$(NOPE)-x"},
		},
		"a value containing = is kept whole": {
			args: []string{"--x=$(A)"},
			env:  []string{"A=b=c"},
			want: []string{"--x=b=c"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, expandArgs(tc.args, tc.env)); diff != "" {
				t.Errorf("expandArgs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDownwardRendersSortedQuotedLines(t *testing.T) {
	got := string(downward(map[string]string{"b": `say "hi"`, "a": "1"}))
	want := "a=\"1\"\nb=\"say \\\"hi\\\"\"\n"
	if got != want {
		t.Errorf("downward = %q, want %q", got, want)
	}
}
