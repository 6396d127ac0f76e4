package preflight

import (
	"fmt"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/mesh"
)

// Check names of CategoryIstiod, CategoryMeshConfig and CategoryZtunnel
// (part of the JSON schema; with several ztunnel DaemonSets the ztunnel
// names get " (<namespace>/<name>)" appended).
const (
	CheckIstiodFound     = "istiod found"
	CheckIstiodVersion   = "istiod version"
	CheckMultiRoot       = "ISTIO_MULTIROOT_MESH enabled"
	CheckMeshXDSAgent    = "PROXY_CONFIG_XDS_AGENT in mesh config"
	CheckEnvoyXDSAgent   = "envoy proxies have PROXY_CONFIG_XDS_AGENT"
	CheckZtunnelFound    = "ztunnel found"
	CheckZtunnelRoots    = "ztunnel trusts multiple roots"
	CheckZtunnelReload   = "ztunnel reload of istiod's root"
	maxRestartsInHint    = 5
	istiodWatchesCACerts = "1.19"
)

// Hints: the exact values to set (facts §2).
const (
	hintMultiRoot = `set ISTIO_MULTIROOT_MESH=true on istiod (the change restarts istiod: do it before rotating):
  Helm: --set pilot.env.ISTIO_MULTIROOT_MESH=true (istio/istiod chart: --set env.ISTIO_MULTIROOT_MESH=true)
  IstioOperator: values.pilot.env.ISTIO_MULTIROOT_MESH: "true"`
	hintXDSAgent = `set meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT: "true"
  Helm (istio/istiod chart): --set-string meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT=true
  IstioOperator: spec.meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT: "true"
then restart the envoy workloads (waypoints, gateways, sidecars) so that their pods get it`
)

func istiodChecks(in *mesh.Install) Category {
	cat := Category{Name: CategoryIstiod}
	var mine, others []mesh.Istiod
	for _, d := range in.Istiods {
		if d.Namespace == in.Namespace {
			mine = append(mine, d)
		} else {
			others = append(others, d)
		}
	}
	var elsewhere []string
	for _, d := range others {
		elsewhere = append(elsewhere, fmt.Sprintf("also found %s/%s (pass -n %s to check that control plane)", d.Namespace, d.Name, d.Namespace))
	}
	if len(mine) == 0 {
		cat.Checks = append(cat.Checks, Check{
			Name:    CheckIstiodFound,
			Status:  StatusError,
			Message: fmt.Sprintf("no istiod Deployment (label %s=%s) in namespace %s", mesh.LabelApp, mesh.IstiodApp, in.Namespace),
			Hint:    "install Istio, or pass -n with the namespace istiod runs in",
			Details: elsewhere,
		})
		return cat
	}

	found := Check{Name: CheckIstiodFound, Status: StatusOK, Details: elsewhere}
	var names, down []string
	for _, d := range mine {
		name := d.Namespace + "/" + d.Name
		if d.Revision != "" && d.Revision != "default" {
			name += " (revision " + d.Revision + ")"
		}
		names = append(names, fmt.Sprintf("%s, %d/%d ready", name, d.ReadyReplicas, d.Replicas))
		if d.ReadyReplicas == 0 {
			down = append(down, d.Name)
		}
	}
	found.Message = strings.Join(names, "; ")
	if len(down) > 0 {
		found.Status = StatusError
		found.Message += ": no ready replica of " + strings.Join(down, ", ") + ", so nothing loads cacerts or signs certificates"
		found.Hint = fmt.Sprintf("get istiod running: kubectl -n %s rollout status deployment/%s; kubectl -n %s logs deployment/%s", in.Namespace, down[0], in.Namespace, down[0])
	}
	cat.Checks = append(cat.Checks, found)

	ver := Check{Name: CheckIstiodVersion, Status: StatusOK}
	var vers, old []string
	for _, d := range mine {
		v, ok := parseVersion(d.Version)
		switch {
		case !ok:
			vers = append(vers, fmt.Sprintf("%s unknown (image %s)", d.Name, d.Image))
		case !v.atLeast(1, 19, 0):
			vers = append(vers, d.Name+" "+d.Version)
			old = append(old, d.Name+" "+d.Version)
		default:
			vers = append(vers, d.Name+" "+d.Version)
		}
	}
	ver.Message = strings.Join(vers, "; ")
	if len(old) > 0 {
		ver.Status = StatusWarning
		ver.Message += fmt.Sprintf(": before %s istiod does not always watch /etc/cacerts, so meshca may have to restart it for each phase", istiodWatchesCACerts)
		ver.Hint = "upgrade istiod to a supported Istio release"
	}
	cat.Checks = append(cat.Checks, ver)

	mr := Check{Name: CheckMultiRoot, Status: StatusOK}
	var off []string
	for _, d := range mine {
		if !d.MultiRoot {
			off = append(off, d.Namespace+"/"+d.Name)
		}
	}
	if len(off) == 0 {
		mr.Message = "set on " + strings.Join(istiodNames(mine), ", ") + ": istiod hot-reloads a changed root-cert.pem and pushes trust bundles to istio-agents"
	} else {
		mr.Status = StatusError
		mr.Message = fmt.Sprintf("%s is not true on %s: istiod ignores a changed root-cert.pem (\"Multi root is disabled, updating new ROOT-CA not supported\") until restarted, so a rotation cannot hot-reload new roots",
			mesh.EnvMultiRoot, strings.Join(off, ", "))
		mr.Hint = hintMultiRoot
	}
	cat.Checks = append(cat.Checks, mr)
	return cat
}

func istiodNames(ds []mesh.Istiod) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Namespace + "/" + d.Name
	}
	return out
}

func multiRootOn(in *mesh.Install) bool {
	n := 0
	for _, d := range in.Istiods {
		if d.Namespace != in.Namespace {
			continue
		}
		if !d.MultiRoot {
			return false
		}
		n++
	}
	return n > 0
}

func meshConfigChecks(in *mesh.Install) Category {
	cat := Category{Name: CategoryMeshConfig}
	mc := Check{Name: CheckMeshXDSAgent, Status: StatusOK}
	switch {
	case in.Config == nil:
		mc.Status = StatusWarning
		mc.Message = fmt.Sprintf("no mesh config ConfigMap %s in namespace %s: envoy proxies get no %s, so each phase of a rotation restarts every waypoint, gateway and sidecar",
			mesh.MeshConfigMapName, in.Namespace, mesh.EnvXDSAgent)
		mc.Hint = hintXDSAgent
	case !in.Config.XDSAgent:
		mc.Status = StatusWarning
		mc.Message = fmt.Sprintf("not set in configmap %s/%s (defaultConfig.proxyMetadata): envoy proxies cannot take new roots by push (PCDS), so each phase of a rotation restarts every waypoint, gateway and sidecar",
			in.Config.Namespace, in.Config.Name)
		mc.Hint = hintXDSAgent
	default:
		mc.Message = fmt.Sprintf("set in configmap %s/%s: istio-agents of pods created since then apply new roots without a restart (PCDS)", in.Config.Namespace, in.Config.Name)
		if !multiRootOn(in) {
			mc.Message += ", but only once istiod has " + mesh.EnvMultiRoot + "=true"
		}
	}
	cat.Checks = append(cat.Checks, mc)

	env := Check{Name: CheckEnvoyXDSAgent, Status: StatusOK}
	var envoys int
	var lacking []mesh.Proxy
	for _, p := range in.Proxies {
		if !p.Kind.Envoy() || p.NotReady == "terminating" {
			continue
		}
		envoys++
		if !p.XDSAgent {
			lacking = append(lacking, p)
		}
	}
	switch {
	case envoys == 0:
		env.Message = "no waypoint, gateway or sidecar pods"
	case len(lacking) == 0:
		env.Message = fmt.Sprintf("all %d envoy proxies (waypoints, gateways, sidecars) have %s=true", envoys, mesh.EnvXDSAgent)
	default:
		env.Status = StatusWarning
		why := ""
		if in.Config != nil && in.Config.XDSAgent {
			why = " (created before it was set)"
		}
		env.Message = fmt.Sprintf("%d of %d envoy proxies lack %s=true%s: the rotation will restart them to deliver new roots",
			len(lacking), envoys, mesh.EnvXDSAgent, why)
		for _, p := range lacking {
			d := fmt.Sprintf("%s %s", p.Kind, p.String())
			var about []string
			if o := p.Owner.String(); o != "" {
				about = append(about, o)
			}
			if !p.Created.IsZero() {
				about = append(about, "created "+p.Created.UTC().Format(time.RFC3339))
			}
			if len(about) > 0 {
				d += " (" + strings.Join(about, ", ") + ")"
			}
			env.Details = append(env.Details, d)
		}
		env.Hint = restartHint(lacking, in.Config != nil && in.Config.XDSAgent)
	}
	cat.Checks = append(cat.Checks, env)
	return cat
}

// restartHint lists the commands that give the proxies the env var now.
func restartHint(proxies []mesh.Proxy, meshConfigSet bool) string {
	var b strings.Builder
	if meshConfigSet {
		b.WriteString("to make their roots update by push instead, restart them before rotating (restart order: waypoints, gateways, sidecars):")
	} else {
		b.WriteString("set the mesh config value first (see above), then restart them (waypoints, gateways, sidecars):")
	}
	seen := map[string]bool{}
	var cmds []string
	for _, p := range proxies {
		var cmd string
		switch p.Owner.Kind {
		case "Deployment", "DaemonSet", "StatefulSet":
			cmd = fmt.Sprintf("kubectl -n %s rollout restart %s/%s", p.Namespace, strings.ToLower(p.Owner.Kind), p.Owner.Name)
		default:
			cmd = fmt.Sprintf("kubectl -n %s delete pod %s", p.Namespace, p.Name)
		}
		if !seen[cmd] {
			seen[cmd] = true
			cmds = append(cmds, cmd)
		}
	}
	for i, cmd := range cmds {
		if i == maxRestartsInHint {
			fmt.Fprintf(&b, "\n  … and %d more", len(cmds)-i)
			break
		}
		b.WriteString("\n  " + cmd)
	}
	return b.String()
}

func ztunnelChecks(in *mesh.Install) Category {
	cat := Category{Name: CategoryZtunnel}
	if len(in.Ztunnels) == 0 {
		c := Check{Name: CheckZtunnelFound, Status: StatusOK,
			Message: fmt.Sprintf("no ztunnel DaemonSet (label %s=%s): not an ambient mesh, nothing to check", mesh.LabelApp, mesh.ZtunnelApp)}
		for _, p := range in.Proxies {
			if p.Kind == mesh.KindZtunnel {
				c.Status = StatusWarning
				c.Message = fmt.Sprintf("ztunnel pods (label %s=%s) run but no ztunnel DaemonSet was found: their version cannot be checked", mesh.LabelApp, mesh.ZtunnelApp)
				c.Hint = "make sure ztunnel is 1.26 or later (1.25.3+, 1.24.6+) before rotating"
				c.Details = append(c.Details, p.String())
			}
		}
		cat.Checks = append(cat.Checks, c)
		return cat
	}
	for _, ds := range in.Ztunnels {
		suffix := ""
		if len(in.Ztunnels) > 1 {
			suffix = " (" + ds.Namespace + "/" + ds.Name + ")"
		}
		name := ds.Namespace + "/" + ds.Name
		cat.Checks = append(cat.Checks, Check{
			Name: CheckZtunnelFound + suffix, Status: StatusOK,
			Message: fmt.Sprintf("daemonset %s, image %s, %d/%d ready", name, ds.Image, ds.Ready, ds.Desired),
		})
		v, ok := parseVersion(ds.Version)
		if !ok {
			tag := ds.Version
			if tag == "" {
				tag = "none"
			}
			cat.Checks = append(cat.Checks,
				Check{
					Name: CheckZtunnelRoots + suffix, Status: StatusWarning,
					Message: fmt.Sprintf("cannot tell the version of ztunnel from image %s (tag %s): ztunnel before 1.26 (1.25.3, 1.24.6) trusts only one root, and a rotation with it fails handshakes", ds.Image, tag),
					Hint:    "check that it runs ztunnel 1.26 or later (1.25.3+, 1.24.6+), or use a versioned image tag",
				},
				Check{
					Name: CheckZtunnelReload + suffix, Status: StatusOK,
					Message: "version unknown: meshca assumes ztunnel loads istiod's root only at start and restarts it after the new roots reach istio-ca-root-cert",
				})
			continue
		}
		roots := Check{Name: CheckZtunnelRoots + suffix, Status: StatusOK,
			Message: fmt.Sprintf("ztunnel %s splits the roots of each CSR response and trusts them all", v)}
		if !ztunnelMultiRoot(v) {
			roots.Status = StatusError
			roots.Message = fmt.Sprintf("ztunnel %s trusts only one root: upgrade to ≥1.26 before rotating", ds.Version)
			if v.major == 1 && v.minor == 25 {
				roots.Message += " (1.25.0 to 1.25.2 carry the multi-root regression istio#55793, fixed in 1.25.3)"
			}
			roots.Hint = fmt.Sprintf("upgrade ztunnel to 1.26 or later (1.25.3+ and 1.24.6+ also trust several roots), e.g. helm upgrade ztunnel istio/ztunnel -n %s --version 1.26.0", ds.Namespace)
		}
		reload := Check{Name: CheckZtunnelReload + suffix, Status: StatusOK}
		if ztunnelReloadsRoot(v) {
			reload.Message = fmt.Sprintf("ztunnel %s re-reads istiod's root when istio-ca-root-cert changes (CA_CERT_WATCHER, ztunnel#1775): its CA connection survives the rotation without a restart", v)
		} else {
			reload.Message = fmt.Sprintf("ztunnel %s loads istiod's root only at start (CA_CERT_WATCHER came with 1.28.6, 1.29.2 and 1.30.0): the rotation restarts ztunnel after the new roots reach istio-ca-root-cert, or its CSRs would fail (ztunnel#1679)", v)
		}
		cat.Checks = append(cat.Checks, roots, reload)
	}
	return cat
}
