package verify

import (
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/proxy"
)

// ConfigMapSummary is the state of the istio-ca-root-cert ConfigMaps that
// istiod writes into every namespace with the bytes of root-cert.pem
// (facts §1). Proxies and a restarted ztunnel trust istiod through them, so
// they must carry the new roots before ztunnel is restarted (facts §5).
type ConfigMapSummary struct {
	// Total is how many ConfigMaps there are; Match how many carry the
	// expected roots.
	Total int `json:"total"`
	Match int `json:"match"`
	// Stale are the others, sorted by namespace.
	Stale []ConfigMapResult `json:"stale"`
}

// ConfigMapResult is one ConfigMap that does not match.
type ConfigMapResult struct {
	// Namespace of the ConfigMap.
	Namespace string `json:"namespace"`
	// Roots it carries (distinct fingerprints).
	Roots []string `json:"roots"`
	// Problems say how it differs.
	Problems []string `json:"problems"`
}

// ConfigMaps checks the istio-ca-root-cert ConfigMaps against exp: the set
// of roots must be exp.Roots (more are allowed with AllowExtraRoots) and,
// when exp.RootCertSHA256 is known, the bytes must be those of
// root-cert.pem — istiod copies them verbatim, so other bytes with the same
// roots mean istiod has not reloaded the latest cacerts.
func ConfigMaps(cms []mesh.RootConfigMap, exp Expectation) *ConfigMapSummary {
	s := &ConfigMapSummary{Total: len(cms), Stale: []ConfigMapResult{}}
	want := proxy.NewTrust(exp.Roots...)
	for i := range cms {
		cm := &cms[i]
		res := ConfigMapResult{Namespace: cm.Namespace, Roots: cm.Trust.Roots}
		if res.Roots == nil {
			res.Roots = []string{}
		}
		if cm.Err != nil {
			res.Problems = append(res.Problems, cm.Err.Error())
		} else {
			missing, extra := cm.Trust.Diff(want)
			for _, fp := range missing {
				res.Problems = append(res.Problems, "missing root "+short(fp))
			}
			if !exp.AllowExtraRoots {
				for _, fp := range extra {
					res.Problems = append(res.Problems, "extra root "+short(fp))
				}
			}
			if len(res.Problems) == 0 && exp.RootCertSHA256 != "" && cm.DataSHA256() != exp.RootCertSHA256 {
				res.Problems = append(res.Problems, "same roots but not the bytes of root-cert.pem: istiod has not reloaded the current cacerts")
			}
		}
		if len(res.Problems) == 0 {
			s.Match++
			continue
		}
		s.Stale = append(s.Stale, res)
	}
	return s
}
