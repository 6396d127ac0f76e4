package htmlreport

import (
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/rotate"
)

// synthetic builds the Model of a phased rotation of one cluster with
// proxies proxies (a tenth ztunnels, a few waypoints and gateways, the rest
// sidecars) through the same path as a real run: the events go through a
// Builder, the header and fleet are what Collect would read.
func synthetic(proxies int) *Model {
	t0 := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tp := func(s float64) *time.Time { t := at(s); return &t }
	counts := map[string]int{"ztunnel": proxies / 10, "waypoint": proxies / 50, "gateway": proxies / 100}
	counts["sidecar"] = proxies - counts["ztunnel"] - counts["waypoint"] - counts["gateway"]
	b := NewBuilder()
	now := 0.0
	emit := func(ev rotate.Event) {
		ev.Time, ev.Elapsed, ev.Cluster = at(now), now, "east"
		b.Observe(ev)
	}
	var bands []Band
	for i, p := range []rotate.Phase{rotate.PhaseTrust, rotate.PhaseIssue, rotate.PhaseRetire} {
		start := now
		emit(rotate.Event{Kind: rotate.EventPhaseWritten, Phase: p, Object: "istio-system/cacerts", Detail: fmt.Sprintf("phase %s: wrote cacerts", p)})
		now += 2
		emit(rotate.Event{Kind: rotate.EventIstiodReloaded, Phase: p, Detail: "istiod reloaded"})
		reloaded := now
		if i == 0 {
			for n := 0; n < 3; n++ {
				w := fmt.Sprintf("DaemonSet/istio-system/ztunnel-%d", n)
				emit(rotate.Event{Kind: rotate.EventRestartStarted, Phase: p, Workload: w, Reason: rotate.ReasonCAChannel})
				now += 8
				emit(rotate.Event{Kind: rotate.EventRestartFinished, Phase: p, Workload: w, Reason: rotate.ReasonCAChannel, Duration: 8})
			}
		}
		for step := 0; step <= 10; step++ {
			var kinds []rotate.KindCount
			conv := 0
			for _, k := range []string{"ztunnel", "waypoint", "gateway", "sidecar"} {
				c := counts[k] * step / 10
				kinds = append(kinds, rotate.KindCount{Kind: k, Converged: c, Total: counts[k]})
				conv += c
			}
			emit(rotate.Event{Kind: rotate.EventConverging, Phase: p, Converged: conv, Total: proxies, Kinds: kinds})
			now += 1.5
		}
		emit(rotate.Event{Kind: rotate.EventPhaseProven, Phase: p, Duration: now - start})
		bands = append(bands, Band{Phase: string(p), Written: tp(start), Reloaded: tp(reloaded), Proven: tp(now)})
		now += 3
	}
	nb, na := at(-86400), at(10*365*86400)
	c := Cluster{Name: "east", Namespace: "istio-system", Strategy: "phased", State: "phase retire proven", Started: tp(-1),
		OldRoots:     []Cert{{Fingerprint: fmt.Sprintf("%064x", 1), Subject: "O=old,CN=Root CA", NotBefore: &nb, NotAfter: &na}},
		OldSigner:    &Cert{Fingerprint: fmt.Sprintf("%064x", 2), Subject: "O=old,CN=Intermediate CA"},
		NewRoot:      &Cert{Fingerprint: fmt.Sprintf("%064x", 3), Subject: "O=new,CN=Root CA", NotBefore: &nb, NotAfter: &na},
		NewSigner:    &Cert{Fingerprint: fmt.Sprintf("%064x", 4), Subject: "O=new,CN=Intermediate CA"},
		BackupSecret: "istio-system/cacerts-backup-0123456789", Bands: bands, FleetTime: tp(now)}
	for _, k := range []string{"ztunnel", "waypoint", "gateway", "sidecar"} {
		for i := 0; i < counts[k]; i++ {
			row := FleetRow{Kind: k, Namespace: fmt.Sprintf("ns-%d", i%20), Name: fmt.Sprintf("%s-%d-7f9c6d5b8-x2x4q", k, i), Status: "match",
				Roots: []string{"000000000000"}, Signers: []string{"000000000000"}}
			if k == "sidecar" && i == 0 {
				row.Status = "stale"
				c.Findings = append(c.Findings, Finding{Subject: "sidecar " + row.Namespace + "/" + row.Name, Problem: "signed by the old intermediate 000000000002",
					Fix: "restart it: kubectl rollout restart -n " + row.Namespace + " deployment/app"})
			}
			c.Fleet = append(c.Fleet, row)
		}
	}
	m := &Model{Generated: at(now + 1), By: "meshca rotate --report", Version: "test", RunBy: "admin", Clusters: []Cluster{c}}
	for s := 0.0; s <= now; s++ {
		n := int64(s)
		m.Probe = append(m.Probe, ProbeSample{Time: at(s), Handshakes: 40 * n, Failures: 0, Refused: n / 20, Resets: n / 30})
	}
	b.Apply(m)
	Axis(m)
	return m
}
