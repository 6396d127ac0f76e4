package sandbox

import "testing"

func TestModuleRevReadsTheCommitOfAPseudoVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v0.0.0-20260827124520-eed52ebb66ad":          "eed52ebb66ad",
		"v1.31.0-alpha.0.20260827124520-eed52ebb66ad": "eed52ebb66ad",
		"v1.28.1":      "v1.28.1",
		"v1.28.1-rc.1": "v1.28.1-rc.1",
		"(devel)":      "(devel)",
	} {
		if got := moduleRev(in); got != want {
			t.Errorf("moduleRev(%q) = %q, want %q", in, got, want)
		}
	}
}
