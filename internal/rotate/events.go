package rotate

import (
	"time"

	"github.com/meshca/meshca/internal/verify"
)

// EventKind says what happened. The kinds are part of the JSON schema of
// `meshca rotate -o json`; new kinds may be added, existing ones keep their
// meaning.
type EventKind string

// Event kinds, roughly in the order a rotation emits them.
const (
	// EventState: where a cluster's rotation stands at the start of a run
	// (Phase; Detail says why a new rotation starts or that nothing is to do).
	EventState EventKind = "state"
	// EventPreflight: the preflight passed before the first write.
	EventPreflight EventKind = "preflight-passed"
	// EventBackup: cacerts was copied to Object and read back byte for byte.
	EventBackup EventKind = "backup"
	// EventRecorded: a new rotation was recorded (Object is the record;
	// NewRoot and NewSigner the fingerprints rotated to).
	EventRecorded EventKind = "recorded"
	// EventNothingToDo: Phase needs no write and no proof (an intermediate-
	// only rotation has no trust and no retire phase).
	EventNothingToDo EventKind = "nothing-to-do"
	// EventPhaseWritten: cacerts now holds Phase's bundle (Detail: what
	// changed, by fingerprint).
	EventPhaseWritten EventKind = "phase-written"
	// EventIstiodWaiting: waiting for istiod to load Phase's bundle.
	EventIstiodWaiting EventKind = "istiod-waiting"
	// EventIstiodReloaded: istiod loaded the bundle (istio-ca-root-cert
	// rewritten in every namespace).
	EventIstiodReloaded EventKind = "istiod-reloaded"
	// EventVerifying: the fleet is being verified against Phase.
	EventVerifying EventKind = "verifying"
	// EventLagging: Total-Converged proxies lag behind Phase.
	EventLagging EventKind = "lagging"
	// EventRestartStarted: a rollout restart of Workload began (Reason says
	// why it is needed).
	EventRestartStarted EventKind = "restart-started"
	// EventRestartFinished: Workload rolled out (Duration).
	EventRestartFinished EventKind = "restart-finished"
	// EventConverging: Converged of Total proxies hold Phase; Expected is
	// when the last lagging proxy's certificate reaches half its lifetime
	// and is refreshed without a restart.
	EventConverging EventKind = "converging"
	// EventPhaseProven: every proxy holds Phase (Duration since the phase
	// started).
	EventPhaseProven EventKind = "phase-proven"
	// EventStopped: the run stops after Phase as asked (--until).
	EventStopped EventKind = "stopped"
	// EventRefused: the engine refused to go on (Detail: why and the fix);
	// the run returns an error with the same text.
	EventRefused EventKind = "refused"
	// EventRolledBack: cacerts is back on the backup Object.
	EventRolledBack EventKind = "rolled-back"
	// EventNote: anything else worth a line (Detail).
	EventNote EventKind = "note"
)

// Event is one thing the rotation engine did or found. `meshca rotate -o
// json` writes each as one JSON line on stdout; the terminal lines, the
// summary and the tests read the same events.
//
// Schema (fields empty for a kind are left out):
//
//	{"time":"RFC 3339","elapsed":seconds,"kind":"<EventKind>","cluster":"<context>",
//	 "phase":"trust|issue|retire|none|complete|rolled-back","workload":"kind/namespace/name",
//	 "object":"namespace/name","converged":n,"total":n,"expected":"RFC 3339",
//	 "kinds":[{"kind":"ztunnel|waypoint|gateway|sidecar","converged":n,"total":n}],
//	 "duration":seconds,"waiting":seconds,"newRoot":"sha256","newSigner":"sha256","reason":"...","detail":"..."}
type Event struct {
	// Time is when it happened; Elapsed is seconds since the run started.
	Time    time.Time `json:"time"`
	Elapsed float64   `json:"elapsed"`
	Kind    EventKind `json:"kind"`
	// Cluster is the kubeconfig context of the cluster.
	Cluster string `json:"cluster,omitempty"`
	Phase   Phase  `json:"phase,omitempty"`
	// Workload is what a restart concerns: kind/namespace/name.
	Workload string `json:"workload,omitempty"`
	// Object is the Secret or ConfigMap concerned: namespace/name.
	Object string `json:"object,omitempty"`
	// Converged and Total count proxies holding the phase.
	Converged int `json:"converged,omitempty"`
	Total     int `json:"total,omitempty"`
	// Kinds splits Converged and Total per proxy kind, for the kinds
	// present (lagging, converging).
	Kinds []KindCount `json:"kinds,omitempty"`
	// Expected is when the last lagging proxy refreshes by itself.
	Expected *time.Time `json:"expected,omitempty"`
	// Duration of a restart or a phase, in seconds.
	Duration float64 `json:"duration,omitempty"`
	// Waiting is the part of a phase's Duration spent waiting for istiod,
	// rollouts and refreshes rather than meshca's own work (phase-proven).
	Waiting float64 `json:"waiting,omitempty"`
	// NewRoot and NewSigner are SHA-256 fingerprints (EventRecorded,
	// EventState).
	NewRoot   string `json:"newRoot,omitempty"`
	NewSigner string `json:"newSigner,omitempty"`
	// Reason says why a restart is needed ("ca-channel", "lagging").
	Reason string `json:"reason,omitempty"`
	// Detail is for humans; match on Kind and the typed fields, never on it.
	Detail string `json:"detail,omitempty"`
}

// KindCount is how many proxies of one kind hold the phase.
type KindCount struct {
	Kind      string `json:"kind"`
	Converged int    `json:"converged"`
	Total     int    `json:"total"`
}

// kindCounts splits a verification per proxy kind, leaving out the kinds
// the fleet does not have.
func kindCounts(rep *verify.Report) []KindCount {
	var out []KindCount
	for _, k := range rep.Kinds {
		if k.Total > 0 {
			out = append(out, KindCount{Kind: string(k.Kind), Converged: k.Total - k.Failing(), Total: k.Total})
		}
	}
	return out
}

// Observer receives the engine's events, in order, from one goroutine.
type Observer interface {
	Observe(Event)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(Event)

// Observe calls f.
func (f ObserverFunc) Observe(e Event) { f(e) }

// Restart reasons.
const (
	// ReasonCAChannel: ztunnel without CA_CERT_WATCHER keeps istiod's root
	// read at start; after the trust phase it must restart once, or its
	// CSRs fail once istiod serves under the new root (ztunnel#1679).
	ReasonCAChannel = "ca-channel"
	// ReasonLagging: proxies lag and cannot catch up by themselves before
	// their half-life refresh (--pace fast restarts them).
	ReasonLagging = "lagging"
	// ReasonPCDSLag: an envoy with live PCDS still lags PCDSGrace after the
	// phase began (--pace fast). istio-agent can keep a retired root in
	// ROOTCA when a certificate request istiod answered before its reload
	// returns after the PCDS push: it merges that answer's roots into
	// ROOTCA and keeps them until its next rotation, SECRET_TTL/2 later
	// (security/pkg/nodeagent/cache/secretcache.go).
	ReasonPCDSLag = "pcds-lag"
	// ReasonIstiodReload: istiod did not hot-reload the bundle in time.
	ReasonIstiodReload = "istiod-reload"
	// ReasonOneStep: the one-step strategy restarts everything.
	ReasonOneStep = "one-step"
)

// emit sends e, stamped, to the observer.
func (e *Engine) emit(ev Event) {
	now := e.opts.Now()
	ev.Time = now.UTC()
	ev.Elapsed = now.Sub(e.started).Seconds()
	e.record(ev)
	if e.opts.Observer != nil {
		e.opts.Observer.Observe(ev)
	}
}
