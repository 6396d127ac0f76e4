package exporter

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// promDir holds the alert rules, their promtool tests and the
// PrometheusRule.
var promDir = filepath.Join("..", "..", "deploy", "prometheus")

// TestPrometheusRules has Prometheus itself check the alert rules and run
// their unit tests (every alert fires and stays silent at least once).
// promtool comes from hack/promtool.sh; without it the test skips, except
// under CI=true where it must run.
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found: run hack/promtool.sh (Debian's prometheus package ships it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, args := range [][]string{
		{"check", "rules", "meshca-rules.yaml"},
		{"test", "rules", "meshca-rules.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = promDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
			continue
		}
		t.Logf("promtool %v:\n%s", args, out)
	}
}

// TestPrometheusRuleMatchesRules keeps the PrometheusRule identical to the
// rules promtool tests.
func TestPrometheusRuleMatchesRules(t *testing.T) {
	var rules map[string]any
	var cr struct {
		APIVersion string         `json:"apiVersion"`
		Kind       string         `json:"kind"`
		Metadata   map[string]any `json:"metadata"`
		Spec       map[string]any `json:"spec"`
	}
	for name, into := range map[string]any{"meshca-rules.yaml": &rules, "prometheusrule.yaml": &cr} {
		data, err := os.ReadFile(filepath.Join(promDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(data, into); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if cr.Kind != "PrometheusRule" {
		t.Errorf("prometheusrule.yaml kind = %q, want PrometheusRule", cr.Kind)
	}
	if len(rules) == 0 {
		t.Fatal("meshca-rules.yaml holds no groups")
	}
	if diff := cmp.Diff(rules, cr.Spec); diff != "" {
		t.Errorf("prometheusrule.yaml spec differs from meshca-rules.yaml (-rules +PrometheusRule):\n%s", diff)
	}
}
