package rotate

import "time"

// Summary is what a run did, per cluster and phase, built from its events
// (Add), so that a summary and the event stream never disagree.
type Summary struct {
	// Steps are the phases proven in the run, in order.
	Steps []Step `json:"steps"`
	// Restarts count the rollout restarts per cluster, phase and workload.
	Restarts []Restart `json:"restarts"`
	// NothingToDo lists the phases an intermediate-only rotation skipped.
	NothingToDo []Step `json:"nothingToDo,omitempty"`
	// Written lists the cacerts writes of the run: "cluster X: phase P".
	Written []string `json:"written,omitempty"`
}

// Step is one timed step of a run.
type Step struct {
	Cluster  string        `json:"cluster"`
	Phase    Phase         `json:"phase"`
	Action   string        `json:"action"`
	Duration time.Duration `json:"duration"`
	// Waiting is the part of Duration spent waiting for rollouts, istiod
	// and refreshes rather than meshca's own work.
	Waiting time.Duration `json:"waiting"`
	Detail  string        `json:"detail,omitempty"`
}

// Restart counts the restarts of one workload in one phase.
type Restart struct {
	Cluster  string `json:"cluster"`
	Phase    Phase  `json:"phase"`
	Workload string `json:"workload"`
	// Reason is why it was restarted (ReasonCAChannel, ReasonLagging, ...).
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// Add folds one event into the summary.
func (s *Summary) Add(ev Event) {
	switch ev.Kind {
	case EventPhaseWritten:
		s.Written = append(s.Written, "cluster "+ev.Cluster+": phase "+string(ev.Phase))
	case EventPhaseProven:
		s.Steps = append(s.Steps, Step{Cluster: ev.Cluster, Phase: ev.Phase, Action: "phase " + string(ev.Phase),
			Duration: seconds(ev.Duration), Waiting: seconds(ev.Waiting)})
	case EventNothingToDo:
		s.NothingToDo = append(s.NothingToDo, Step{Cluster: ev.Cluster, Phase: ev.Phase, Action: "phase " + string(ev.Phase), Detail: "nothing to do"})
	case EventRestartStarted:
		for i := range s.Restarts {
			r := &s.Restarts[i]
			if r.Cluster == ev.Cluster && r.Phase == ev.Phase && r.Workload == ev.Workload && r.Reason == ev.Reason {
				r.Count++
				return
			}
		}
		s.Restarts = append(s.Restarts, Restart{Cluster: ev.Cluster, Phase: ev.Phase, Workload: ev.Workload, Reason: ev.Reason, Count: 1})
	}
}

// RestartsOf counts the restarts of workload (kind/namespace/name) in the
// run, over every phase.
func (s Summary) RestartsOf(workload string) int {
	n := 0
	for _, r := range s.Restarts {
		if r.Workload == workload {
			n += r.Count
		}
	}
	return n
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
