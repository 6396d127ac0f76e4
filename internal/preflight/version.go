package preflight

import (
	"fmt"
	"strconv"
	"strings"
)

// version is a release number read from an image tag.
type version struct {
	major, minor, patch int
}

func (v version) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

// atLeast reports whether v >= major.minor.patch.
func (v version) atLeast(major, minor, patch int) bool {
	if v.major != major {
		return v.major > major
	}
	if v.minor != minor {
		return v.minor > minor
	}
	return v.patch >= patch
}

// parseVersion reads an Istio image tag: "1.28.1", "1.28.1-distroless",
// "v1.26.0-beta.1", "1.30" (patch 0). Anything else ("latest", "master",
// an empty tag of a digest-only reference) is not a version.
func parseVersion(tag string) (version, bool) {
	s := strings.TrimPrefix(tag, "v")
	if i := strings.IndexAny(s, "-+_"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return version{}, false
	}
	nums := make([]int, 3)
	for i, p := range parts {
		if p == "" || strings.TrimLeft(p, "0123456789") != "" {
			return version{}, false
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return version{}, false
		}
		nums[i] = n
	}
	return version{nums[0], nums[1], nums[2]}, true
}

// ztunnelMultiRoot reports whether ztunnel v splits the roots of a CSR
// response into several (facts §3: since 1.26, 1.25.3 and 1.24.6; 1.25.0 to
// 1.25.2 carry the regression of istio#55793).
func ztunnelMultiRoot(v version) bool {
	switch {
	case v.atLeast(1, 26, 0):
		return true
	case v.major == 1 && v.minor == 25:
		return v.patch >= 3
	case v.major == 1 && v.minor == 24:
		return v.patch >= 6
	}
	return false
}

// ztunnelReloadsRoot reports whether ztunnel v re-reads istiod's root file
// when it changes (CA_CERT_WATCHER, ztunnel#1775: 1.30.0, backported to
// 1.28.6 and 1.29.2). The versions before keep the root they read at start.
func ztunnelReloadsRoot(v version) bool {
	switch {
	case v.atLeast(1, 30, 0):
		return true
	case v.major == 1 && v.minor == 29:
		return v.patch >= 2
	case v.major == 1 && v.minor == 28:
		return v.patch >= 6
	}
	return false
}

// ZtunnelWatchesCACert reports whether the ztunnel of image tag tag re-reads
// istiod's root file when istio-ca-root-cert changes (CA_CERT_WATCHER: from
// 1.28.6, 1.29.2 and 1.30.0). known is false when the tag is not a version;
// callers then assume it does not, which costs a restart, never a failure.
func ZtunnelWatchesCACert(tag string) (watches, known bool) {
	v, ok := parseVersion(tag)
	if !ok {
		return false, false
	}
	return ztunnelReloadsRoot(v), true
}
