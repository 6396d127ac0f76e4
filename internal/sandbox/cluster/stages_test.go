package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// shippedPodReady is the part of kwok v0.8.0's pod-ready stage that
// gateReadiness edits (kustomize/stage/pod/fast/pod-ready.yaml).
const shippedPodReady = `  next:
    statusTemplate: |
      {{ $now := Now }}

      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
`

func TestGateReadinessLeavesGatedPodsUnready(t *testing.T) {
	got, err := gateReadiness("kwok/stages/pod-ready.yaml", []byte(shippedPodReady), "example.com/gate")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`{{ $gated := false }}{{ range .spec.readinessGates }}{{ if eq .conditionType "example.com/gate" }}{{ $gated = true }}{{ end }}{{ end }}`,
		`status: {{ if $gated }}"False"{{ else }}"True"{{ end }}` + "\n        type: Ready",
		`status: {{ if eq .conditionType "example.com/gate" }}"False"{{ else }}"True"{{ end }}` + "\n        type: {{ .conditionType | Quote }}",
		"status: \"True\"\n        type: Initialized",
		"status: \"True\"\n        type: ContainersReady",
	} {
		if !strings.Contains(string(got), want) {
			t.Errorf("edited stage lacks %q:\n%s", want, got)
		}
	}
	if same, err := gateReadiness("kwok/stages/pod-delete.yaml", []byte("x"), "example.com/gate"); err != nil || string(same) != "x" {
		t.Errorf("another stage was changed: %q, %v", same, err)
	}
	if _, err := gateReadiness("kwok/stages/pod-ready.yaml", []byte("other kwok"), "example.com/gate"); err == nil || !strings.Contains(err.Error(), "cannot gate pod readiness") {
		t.Errorf("an unknown pod-ready stage: err %v, want a refusal", err)
	}
}

// TestGateReadinessMatchesTheShippedStage checks the edit against the stage
// file hack/controlplane.sh copies from the kwok module, when it is there.
func TestGateReadinessMatchesTheShippedStage(t *testing.T) {
	bin, err := FindBinDir()
	if err != nil {
		t.Skip(err)
	}
	path := filepath.Join(bin, "assets", "kwok", "stages", "pod-ready.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("%v: run make controlplane", err)
	}
	if _, err := gateReadiness(path, data, "example.com/gate"); err != nil {
		t.Fatal(err)
	}
}
