package sandbox

import (
	"debug/buildinfo"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
)

// istioModule is the module pilot-discovery is built from (tools/go.mod).
const istioModule = "istio.io/istio"

// IstiodVersion says which istiod the sandbox really runs: the release line
// of the istio.io/istio module it was built from (its VERSION file, which
// hack/controlplane.sh copies into bin/assets/istio) with Istio's "-dev"
// suffix for an untagged build, and the module's commit:
// "1.31-dev-eed52ebb66ad". It is used as the istiod image tag, so meshca
// reads the truth, and printed by `sandbox up` and `sandbox status`. Parts
// it cannot read are "unknown".
func IstiodVersion(binDir string) string {
	line := "unknown"
	if data, err := os.ReadFile(filepath.Join(binDir, "assets", "istio", "VERSION")); err == nil {
		if v := strings.TrimSpace(string(data)); v != "" {
			line = v
		}
	}
	rev := "unknown"
	if info, err := buildinfo.ReadFile(filepath.Join(binDir, "pilot-discovery")); err == nil {
		// Built from the tools module, the istio.io/istio module is the
		// binary's main module; built otherwise, one of its dependencies.
		for _, dep := range append([]*debug.Module{&info.Main}, info.Deps...) {
			if dep.Path != istioModule {
				continue
			}
			if dep.Replace != nil {
				dep = dep.Replace
			}
			rev = moduleRev(dep.Version)
		}
	}
	return line + "-dev-" + rev
}

// moduleRev is the commit of a pseudo-version
// ("v0.0.0-20260827124520-eed52ebb66ad" gives "eed52ebb66ad"), or the
// version itself.
func moduleRev(v string) string {
	parts := strings.Split(v, "-")
	if n := len(parts); n >= 3 {
		ts := parts[n-2]
		if i := strings.LastIndex(ts, "."); i >= 0 {
			ts = ts[i+1:]
		}
		if len(ts) == 14 && strings.Trim(ts, "0123456789") == "" {
			return parts[n-1]
		}
	}
	return v
}
