package exporter

import (
	"context"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/rotate"
)

// recordKey is the key of the rotation record in ConfigMap rotate.RecordName.
const recordKey = rotate.RecordKey

// Phases the exporter publishes for meshca_rotation_phase (rotate's phases).
var phases = []rotate.Phase{rotate.PhaseNone, rotate.PhaseTrust, rotate.PhaseIssue, rotate.PhaseRetire, rotate.PhaseComplete, rotate.PhaseRolledBack}

// rotationSnapshot is where a cluster's rotation stands by its record.
type rotationSnapshot struct {
	phase rotate.Phase
	// since is when the phase was written (proven, for complete; the
	// rollback, for rolled-back); zero without a record.
	since time.Time
}

// readRotation reads the rotation record in namespace. Without one, the
// phase is none.
func readRotation(ctx context.Context, cs kubernetes.Interface, namespace string) (*rotationSnapshot, error) {
	r, err := rotate.ReadRecord(ctx, cs, namespace)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return &rotationSnapshot{phase: rotate.PhaseNone}, nil
	}
	return phaseOf(r), nil
}

// phaseOf is the latest transition of a record: the phase written last
// (complete once retire is proven), or rolled-back when the rollback came
// after it.
func phaseOf(r *rotate.Record) *rotationSnapshot {
	s := &rotationSnapshot{phase: rotate.PhaseNone}
	for _, t := range r.Transitions {
		if t.Written != nil && !t.Written.Before(s.since) {
			s.phase, s.since = t.Phase, *t.Written
		}
		if t.Phase == rotate.PhaseRetire && t.Proven != nil && !t.Proven.Before(s.since) {
			s.phase, s.since = rotate.PhaseComplete, *t.Proven
		}
	}
	if r.RolledBack != nil && !r.RolledBack.Before(s.since) {
		s.phase, s.since = rotate.PhaseRolledBack, *r.RolledBack
	}
	return s
}
