package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// kwokStages are kwok's fast node and pod stages: nodes become Ready at once
// and keep a lease; pods become Running/Ready, complete, and are deleted
// without the random delays of the general stages.
var kwokStages = []string{
	"kwok/stages/node-initialize.yaml",
	"kwok/stages/node-heartbeat-with-lease.yaml",
	"kwok/stages/pod-ready.yaml",
	"kwok/stages/pod-complete.yaml",
	"kwok/stages/pod-delete.yaml",
}

// writeKwokConfig concatenates the stage files into kwok's config file:
// the standalone kwok has no built-in stages.
func (c *Cluster) writeKwokConfig() error {
	var b strings.Builder
	for _, s := range kwokStages {
		data, err := os.ReadFile(c.cfg.asset(s))
		if err != nil {
			return fmt.Errorf("read kwok stage %s: %w", s, err)
		}
		data = fixNodeAddresses(s, data)
		if data, err = gateReadiness(s, data, c.cfg.ReadinessGate); err != nil {
			return err
		}
		b.WriteString("---\n")
		b.Write(data)
		if !strings.HasSuffix(b.String(), "\n") {
			b.WriteString("\n")
		}
	}
	return writeFileAtomic(filepath.Join(c.cfg.Dir, "kwok", "kwok.yaml"), []byte(b.String()), 0o644)
}

// nodeAddresses always writes both addresses of a kwok node: InternalIP
// (--node-ip) and Hostname (the node's name).
const nodeAddresses = `      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      - address: {{ .metadata.name | Quote }}
        type: Hostname

`

// fixNodeAddresses replaces the addresses block of kwok v0.8.0's node
// stages. As shipped, NodeName renders empty, so a node never gets a
// Hostname address, and whenever node-initialize runs again (after the
// node-lifecycle controller marks a node Unknown, which happens on a loaded
// control plane with hundreds of nodes) its template writes "addresses:"
// with no entries: the API server then refuses every port-forward to the
// node's pods ("no preferred addresses found") until the next heartbeat.
//
// A stage without the shipped block (another kwok version) is kept as is.
func fixNodeAddresses(stage string, data []byte) []byte {
	from, ok := map[string]string{
		"node-initialize.yaml":           "      {{ $hasInternalIP := false }}",
		"node-heartbeat-with-lease.yaml": "      addresses:\n      {{ with .status.addresses }}",
	}[filepath.Base(stage)]
	if !ok {
		return data
	}
	text := string(data)
	start, end := strings.Index(text, from), strings.Index(text, "      {{ with NodePort }}")
	if start < 0 || end < start {
		return data
	}
	return []byte(text[:start] + nodeAddresses + text[end:])
}

// gateReadiness edits kwok's pod-ready stage so that a pod carrying the
// readiness gate named gate turns Running but not Ready: whoever plays
// kubelet for it sets the gate's condition and Ready once the pod's process
// really is ready, as a real kubelet does after a readiness probe. As
// shipped, the stage marks every pod Ready at once and sets every readiness
// gate True. Pods without the gate are unchanged. An empty gate leaves the
// stage as it is; a stage that does not have the shipped text is an error,
// since readiness would silently be wrong.
func gateReadiness(stage string, data []byte, gate string) ([]byte, error) {
	if gate == "" || filepath.Base(stage) != "pod-ready.yaml" {
		return data, nil
	}
	edits := []struct{ from, to string }{
		{"      {{ $now := Now }}\n",
			"      {{ $now := Now }}\n      {{ $gated := false }}{{ range .spec.readinessGates }}{{ if eq .conditionType " + strconv.Quote(gate) + " }}{{ $gated = true }}{{ end }}{{ end }}\n"},
		{"        status: \"True\"\n        type: Ready\n",
			"        status: {{ if $gated }}\"False\"{{ else }}\"True\"{{ end }}\n        type: Ready\n"},
		{"        status: \"True\"\n        type: {{ .conditionType | Quote }}\n",
			"        status: {{ if eq .conditionType " + strconv.Quote(gate) + " }}\"False\"{{ else }}\"True\"{{ end }}\n        type: {{ .conditionType | Quote }}\n"},
	}
	text := string(data)
	for _, e := range edits {
		if strings.Count(text, e.from) != 1 {
			return nil, fmt.Errorf("kwok stage %s is not the one this sandbox knows (kwok v0.8.0): cannot gate pod readiness on %s", stage, gate)
		}
		text = strings.Replace(text, e.from, e.to, 1)
	}
	return []byte(text), nil
}
