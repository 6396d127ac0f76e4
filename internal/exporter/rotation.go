package exporter

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/rotate"
)

// recordKey is the key of the rotation record in ConfigMap
// rotate.RecordName. internal/rotate keeps its reader unexported; the
// exporter decodes the same JSON into rotate.Record, read-only.
const recordKey = "state.json"

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
	cm, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, rotate.RecordName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &rotationSnapshot{phase: rotate.PhaseNone}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read configmap %s/%s: %w", namespace, rotate.RecordName, err)
	}
	var r rotate.Record
	if err := json.Unmarshal([]byte(cm.Data[recordKey]), &r); err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %s is not a rotation record: %w", namespace, rotate.RecordName, recordKey, err)
	}
	return phaseOf(&r), nil
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
