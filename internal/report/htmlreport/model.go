// Package htmlreport renders a CA rotation as one self-contained HTML file:
// a header per cluster (old and new CA, backup, who ran it), an SVG
// timeline of the phases with each cacerts write, istiod reload, restart
// and proof, the convergence of each proxy kind, the sandbox probe's
// counters on the same time axis, the final fleet and every finding.
//
// It is one more renderer of the rotation engine's events (rotate.Event),
// beside the terminal lines and -o json of internal/cmd/rotate: the engine
// knows nothing of it. A Model is built from what the cluster holds
// (Collect: the rotation record, the backup, cacerts, the fleet), the
// events (Builder) and, with a sandbox, the probe's samples; Render turns it
// into HTML with html/template and SVG drawn in Go. No script runs in the
// page and nothing is fetched: styles are inline, there are no fonts or
// images besides the inline SVG.
package htmlreport

import (
	"time"
)

// Model is everything a report shows. Its JSON is embedded in the page (a
// data block, not a script) so that a report can be read back and compared.
type Model struct {
	// Generated is when the report was written; By says by what command.
	Generated time.Time `json:"generated"`
	By        string    `json:"by"`
	// RunBy is the user who ran the rotation (rotate --report) or built the
	// report (meshca report), as the API server authenticated them; Version
	// is meshca's version.
	RunBy   string `json:"runBy,omitempty"`
	Version string `json:"version,omitempty"`
	// HasEvents is true when the engine's events were available (always
	// with rotate --report; with meshca report only given --events).
	HasEvents bool `json:"hasEvents"`
	// RunError is why the run stopped, when it failed (rotate --report).
	RunError string `json:"runError,omitempty"`
	// Start and End bound the time axis.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Clusters in the order of the --context flags.
	Clusters []Cluster `json:"clusters"`
	// Probe holds the sandbox probe's totals sampled during the run (empty
	// without --sandbox).
	Probe []ProbeSample `json:"probe,omitempty"`
}

// Cluster is one cluster's rotation.
type Cluster struct {
	// Name is the kubeconfig context; Namespace the Istio namespace.
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Strategy is phased or one-step; empty without a rotation record.
	Strategy string `json:"strategy,omitempty"`
	// State says where the rotation stands (from the record).
	State string `json:"state,omitempty"`
	// Started is when the rotation began (the record's).
	Started *time.Time `json:"started,omitempty"`
	// OldRoots, OldSigner, NewRoot and NewSigner describe the CA replaced
	// and the CA rotated to.
	OldRoots  []Cert `json:"oldRoots,omitempty"`
	OldSigner *Cert  `json:"oldSigner,omitempty"`
	NewRoot   *Cert  `json:"newRoot,omitempty"`
	NewSigner *Cert  `json:"newSigner,omitempty"`
	// BackupSecret is namespace/name of the backup of the original cacerts.
	BackupSecret string `json:"backupSecret,omitempty"`
	// RolledBack is when the backup was restored, if it was.
	RolledBack *time.Time `json:"rolledBack,omitempty"`
	// Bands are the phases, in order.
	Bands []Band `json:"bands,omitempty"`
	// Markers, Restarts and Convergence come from the events.
	Markers     []Marker      `json:"markers,omitempty"`
	Restarts    []RestartSpan `json:"restarts,omitempty"`
	Convergence []Series      `json:"convergence,omitempty"`
	// Fleet is the fleet verified against the CA cacerts holds at the end,
	// at FleetTime.
	Fleet     []FleetRow `json:"fleet,omitempty"`
	FleetTime *time.Time `json:"fleetTime,omitempty"`
	// Findings are everything that needs a look, each with its fix.
	Findings []Finding `json:"findings,omitempty"`
}

// Cert describes a CA certificate by fingerprint; Subject and validity are
// known when the certificate was found in cacerts, the pending bundle or the
// backup.
type Cert struct {
	Fingerprint string     `json:"sha256"`
	Subject     string     `json:"subject,omitempty"`
	NotBefore   *time.Time `json:"notBefore,omitempty"`
	NotAfter    *time.Time `json:"notAfter,omitempty"`
}

// Band is one phase: when cacerts was written, istiod reloaded it and the
// fleet proved it.
type Band struct {
	Phase    string     `json:"phase"`
	Written  *time.Time `json:"written,omitempty"`
	Reloaded *time.Time `json:"reloaded,omitempty"`
	Proven   *time.Time `json:"proven,omitempty"`
}

// Marker kinds.
const (
	MarkWrite    = "cacerts-write"
	MarkReload   = "istiod-reload"
	MarkProven   = "proven"
	MarkRefused  = "refused"
	MarkRollback = "rolled-back"
	MarkStopped  = "stopped"
)

// Marker is one instant on the timeline.
type Marker struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Phase  string    `json:"phase,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// RestartSpan is one rollout restart; End is nil when it did not finish.
type RestartSpan struct {
	Workload string     `json:"workload"`
	Phase    string     `json:"phase"`
	Reason   string     `json:"reason"`
	Start    time.Time  `json:"start"`
	End      *time.Time `json:"end,omitempty"`
}

// Series is the convergence of one proxy kind over time.
type Series struct {
	Kind   string  `json:"kind"`
	Points []Point `json:"points"`
}

// Point is how many proxies of a kind held Phase at Time.
type Point struct {
	Time      time.Time `json:"time"`
	Phase     string    `json:"phase"`
	Converged int       `json:"converged"`
	Total     int       `json:"total"`
}

// ProbeSample is the sandbox probe's running totals at Time.
type ProbeSample struct {
	Time       time.Time `json:"time"`
	Handshakes int64     `json:"handshakes"`
	Failures   int64     `json:"failures"`
	Refused    int64     `json:"refused"`
	Resets     int64     `json:"resets"`
}

// FleetRow is one proxy of the final fleet.
type FleetRow struct {
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Status    string   `json:"status"`
	Roots     []string `json:"roots,omitempty"`
	Signers   []string `json:"signers,omitempty"`
}

// Finding is something that needs a look, with what to do about it.
type Finding struct {
	Subject string `json:"subject"`
	Problem string `json:"problem"`
	Fix     string `json:"fix"`
}

// Known is the part of m that `meshca report` can rebuild from the cluster
// alone, without the event stream: the header and phases of each cluster,
// the final fleet and its findings. Two reports of the same rotation agree
// on it.
func (m *Model) Known() []Cluster {
	out := make([]Cluster, len(m.Clusters))
	for i, c := range m.Clusters {
		c.Markers, c.Restarts, c.Convergence, c.FleetTime = nil, nil, nil, nil
		var fs []Finding
		for _, f := range c.Findings {
			if !f.fromEvents() {
				fs = append(fs, f)
			}
		}
		c.Findings = fs
		out[i] = c
	}
	return out
}

// eventSubject marks findings that come from the event stream.
const eventSubject = "rotation run"

func (f Finding) fromEvents() bool { return f.Subject == eventSubject }

// BandsPerCluster is how many phase bands each cluster's timeline has.
func BandsPerCluster(m *Model) map[string]int {
	out := map[string]int{}
	for _, c := range m.Clusters {
		out[c.Name] = len(c.Bands)
	}
	return out
}
