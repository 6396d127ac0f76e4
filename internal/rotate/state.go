// Package rotate is the rotation engine: it replaces the CA of a live mesh in
// the three phases of istio-ca-facts.md §5 (trust, issue, retire), one or
// several clusters at a time, proving each phase on the whole fleet before
// the next, and rolls back to the backup it takes before the first write.
//
// The cluster is the source of truth. The phase is derived from what the
// cacerts Secret holds (which signer, which roots) against a small record
// kept next to it — ConfigMap meshca-rotation: the old and new fingerprints,
// the backup Secret's name, the time of each transition — and from what the
// fleet proves. The new cluster bundle waits in Secret meshca-rotation-next
// (the new intermediate, never the root key). A rotation interrupted at any
// point is continued by running it again; every write of cacerts carries the
// resourceVersion it was computed from, so a concurrent edit is detected and
// never overwritten.
package rotate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// Names of the objects meshca keeps next to cacerts.
const (
	CACertsSecret = "cacerts"
	RecordName    = "meshca-rotation"
	// RecordKey is the key of the record's JSON in ConfigMap RecordName.
	RecordKey  = "state.json"
	NextSecret = "meshca-rotation-next"
	recordKey  = RecordKey
	// BackupPrefix starts the name of backup Secrets; the rest is the
	// rotation id (start time and content hash, see rotationID).
	BackupPrefix = "cacerts-backup-"
	// LabelManagedBy marks every object meshca creates.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	managedBy      = "meshca"
	// Labels and annotation of backup Secrets: what they back up, the hash
	// of the backed-up bytes, the rotation they belong to, when taken.
	labelBackupOf         = "meshca.io/backup-of"
	labelContentHash      = "meshca.io/content-sha256"
	labelRotationID       = "meshca.io/rotation-id"
	annotationBackupTaken = "meshca.io/taken"
)

// Phase is where a cluster's rotation stands, derived from cacerts.
type Phase string

// Phases of a rotation, in order. Complete is Retire proven on the fleet.
const (
	PhaseNone       Phase = "none"
	PhaseTrust      Phase = "trust"
	PhaseIssue      Phase = "issue"
	PhaseRetire     Phase = "retire"
	PhaseComplete   Phase = "complete"
	PhaseRolledBack Phase = "rolled-back"
)

// index orders phases; unknown phases sort first.
func (p Phase) index() int {
	return slices.Index([]Phase{PhaseNone, PhaseTrust, PhaseIssue, PhaseRetire, PhaseComplete}, p)
}

// Transition records when a phase was written and proven.
type Transition struct {
	Phase   Phase      `json:"phase"`
	Written *time.Time `json:"written,omitempty"`
	// Reloaded is when istiod was seen to have loaded the phase's bundle.
	Reloaded *time.Time `json:"reloaded,omitempty"`
	Proven   *time.Time `json:"proven,omitempty"`
}

// Record is the rotation's record, kept in ConfigMap meshca-rotation for
// humans and for `meshca status`. It holds fingerprints only, never keys.
type Record struct {
	// ID names the rotation (start time and hash of the backed-up bytes);
	// its backup Secret is BackupPrefix + ID. Empty in records written
	// before meshca named rotations.
	ID string `json:"id,omitempty"`
	// Strategy is phased or one-step.
	Strategy string `json:"strategy"`
	// OldRoots and OldSigner are the fingerprints of the CA being replaced.
	OldRoots  []string `json:"oldRoots"`
	OldSigner string   `json:"oldSigner"`
	// NewRoot and NewSigner are the fingerprints of the new CA.
	NewRoot   string `json:"newRoot"`
	NewSigner string `json:"newSigner"`
	// BackupSecret is the Secret holding the original cacerts, byte for byte.
	BackupSecret string `json:"backupSecret"`
	// Started is when the rotation began.
	Started time.Time `json:"started"`
	// Transitions lists each phase's write and proof times.
	Transitions []Transition `json:"transitions"`
	// From names the Secret the old CA was read from: istio-ca-secret for
	// a migration from istiod's self-signed CA (then BackupSecret is a copy
	// of it); empty for a rotation of cacerts.
	From string `json:"from,omitempty"`
	// RolledBack is set when `meshca rollback` restored the backup.
	RolledBack *time.Time `json:"rolledBack,omitempty"`

	resourceVersion string
}

// mark records a transition time.
func (r *Record) mark(p Phase, proven bool, t time.Time) {
	t = t.UTC()
	for i := range r.Transitions {
		if r.Transitions[i].Phase == p {
			if proven {
				r.Transitions[i].Proven = &t
			} else if r.Transitions[i].Written == nil {
				r.Transitions[i].Written = &t
			}
			return
		}
	}
	tr := Transition{Phase: p}
	if proven {
		tr.Proven = &t
	} else {
		tr.Written = &t
	}
	r.Transitions = append(r.Transitions, tr)
}

// markReloaded records when istiod loaded phase p's bundle (the first time).
func (r *Record) markReloaded(p Phase, t time.Time) {
	for i := range r.Transitions {
		if r.Transitions[i].Phase == p && r.Transitions[i].Reloaded == nil {
			t = t.UTC()
			r.Transitions[i].Reloaded = &t
		}
	}
}

// reloaded returns when istiod loaded phase p's bundle, if recorded.
func (r *Record) reloaded(p Phase) *time.Time {
	for _, t := range r.Transitions {
		if t.Phase == p {
			return t.Reloaded
		}
	}
	return nil
}

// finished reports whether the rotation's last phase was proven.
func (r *Record) finished() bool {
	if r.IntermediateOnly() {
		return r.proven(PhaseIssue)
	}
	return r.proven(PhaseRetire)
}

// written reports whether phase p's bundle was written.
func (r *Record) written(p Phase) bool {
	for _, t := range r.Transitions {
		if t.Phase == p && t.Written != nil {
			return true
		}
	}
	return false
}

// proven reports whether phase p was proven on the fleet.
func (r *Record) proven(p Phase) bool {
	for _, t := range r.Transitions {
		if t.Phase == p && t.Proven != nil {
			return true
		}
	}
	return false
}

// store is the Kubernetes side of a cluster's rotation state.
type store struct {
	client    kubernetes.Interface
	namespace string
}

// readCACerts returns the cacerts bundle and the Secret's resourceVersion.
func (s store) readCACerts(ctx context.Context) (*bundle.Bundle, string, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, CACertsSecret, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, "", s.noCACerts(ctx)
		}
		return nil, "", fmt.Errorf("read secret %s/%s: %w", s.namespace, CACertsSecret, err)
	}
	b, err := bundle.FromSecretData("secret "+s.namespace+"/"+CACertsSecret, sec.Data)
	if err != nil {
		return nil, "", err
	}
	return b, sec.ResourceVersion, nil
}

// ErrConcurrentEdit is returned when cacerts changed under the engine.
var ErrConcurrentEdit = errors.New("cacerts was changed by someone else during the rotation")

// writeCACerts replaces cacerts' data, only if the Secret is still at
// resourceVersion rv.
func (s store) writeCACerts(ctx context.Context, b *bundle.Bundle, rv string) (string, error) {
	secrets := s.client.CoreV1().Secrets(s.namespace)
	sec, err := secrets.Get(ctx, CACertsSecret, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read secret %s/%s: %w", s.namespace, CACertsSecret, err)
	}
	if sec.ResourceVersion != rv {
		return "", fmt.Errorf("%w (secret %s/%s resourceVersion %s, expected %s): nothing was overwritten; check who changed it, then run meshca rotate again to continue from what the cluster holds",
			ErrConcurrentEdit, s.namespace, CACertsSecret, sec.ResourceVersion, rv)
	}
	sec.Data = b.SecretData()
	updated, err := secrets.Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return "", fmt.Errorf("%w (secret %s/%s): the write was refused, nothing was overwritten; run meshca rotate again to continue from what the cluster holds",
			ErrConcurrentEdit, s.namespace, CACertsSecret)
	}
	if err != nil {
		return "", fmt.Errorf("write secret %s/%s: %w", s.namespace, CACertsSecret, err)
	}
	return updated.ResourceVersion, nil
}

// contentHash is the start of the SHA-256 of a Secret's data (keys sorted),
// the label that finds a backup of the same bytes.
func contentHash(data map[string][]byte) string {
	h := sha256.New()
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		_, _ = fmt.Fprintf(h, "%s\x00%d\x00", k, len(data[k]))
		h.Write(data[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:10]
}

// rotationID names a rotation: its start time (UTC, to the second) and the
// content hash of the cacerts it starts from. Two rotations from the same
// bytes get different ids; the backup Secret is named after it.
func rotationID(started time.Time, hash string) string {
	return started.UTC().Format("20060102-150405") + "-" + hash
}

// backup copies cur into the backup Secret of a rotation starting at now
// and reads it back to prove the copy is byte-for-byte equal before
// anything else changes. It returns the Secret's name and the rotation id.
func (s store) backup(ctx context.Context, cur *bundle.Bundle, last *Record, now time.Time) (name, id string, err error) {
	return s.backupData(ctx, CACertsSecret, BackupPrefix, corev1.SecretTypeOpaque, cur.SecretData(), last, now)
}

// backupData copies the data of Secret of (type typ) into a backup Secret
// named prefix + rotation id, and reads it back to prove it equal byte for
// byte. A backup of the same bytes left by a start that crashed before its
// record was written (not the backup of the last recorded rotation, last)
// is reused, so a re-run does not pile up keys.
func (s store) backupData(ctx context.Context, of, prefix string, typ corev1.SecretType, data map[string][]byte, last *Record, now time.Time) (name, id string, err error) {
	hash := contentHash(data)
	secrets := s.client.CoreV1().Secrets(s.namespace)
	existing, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: labelBackupOf + "=" + of + "," + labelContentHash + "=" + hash})
	if err != nil {
		return "", "", fmt.Errorf("list backup secrets in %s: %w", s.namespace, err)
	}
	for _, sec := range existing.Items {
		if id := sec.Labels[labelRotationID]; id != "" && (last == nil || last.BackupSecret != sec.Name) {
			name = sec.Name
			break
		}
	}
	if name == "" {
		id := rotationID(now, hash)
		name = prefix + id
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.namespace,
				Labels:      map[string]string{LabelManagedBy: managedBy, labelBackupOf: of, labelContentHash: hash, labelRotationID: id},
				Annotations: map[string]string{annotationBackupTaken: now.UTC().Format(time.RFC3339)},
			},
			Type: typ,
			Data: data,
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return "", "", fmt.Errorf("create backup secret %s/%s: %w", s.namespace, name, err)
		}
	}
	got, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("read back backup secret %s/%s: %w", s.namespace, name, err)
	}
	if !maps.EqualFunc(got.Data, data, bytes.Equal) {
		return "", "", fmt.Errorf("backup secret %s/%s does not equal %s byte for byte: refusing to continue (delete it and run again)", s.namespace, name, of)
	}
	return name, got.Labels[labelRotationID], nil
}

// readBackup returns the backed-up bundle.
func (s store) readBackup(ctx context.Context, name string) (*bundle.Bundle, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read backup secret %s/%s: %w", s.namespace, name, err)
	}
	return bundle.FromSecretData("secret "+s.namespace+"/"+name, sec.Data)
}

// readNext returns the pending new bundle and its Secret's resourceVersion,
// or nil and "" when there is none.
func (s store) readNext(ctx context.Context) (*bundle.Bundle, string, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, NextSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read secret %s/%s: %w", s.namespace, NextSecret, err)
	}
	b, err := bundle.FromSecretData("secret "+s.namespace+"/"+NextSecret, sec.Data)
	return b, sec.ResourceVersion, err
}

// writeNext stores the pending new bundle, guarded like cacerts: created
// only when absent (rv ""), otherwise updated only if the Secret is still at
// resourceVersion rv, so a run never replaces a pending intermediate it did
// not read.
func (s store) writeNext(ctx context.Context, b *bundle.Bundle, rv string) error {
	secrets := s.client.CoreV1().Secrets(s.namespace)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: NextSecret, Namespace: s.namespace, Labels: map[string]string{LabelManagedBy: managedBy}, ResourceVersion: rv},
		Type:       corev1.SecretTypeOpaque,
		Data:       b.SecretData(),
	}
	var err error
	if rv == "" {
		_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
	} else {
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
		return fmt.Errorf("%w (secret %s/%s changed since it was read): nothing was overwritten; run meshca status to see who rotates, then run meshca rotate again", ErrConcurrentEdit, s.namespace, NextSecret)
	}
	if err != nil {
		return fmt.Errorf("write secret %s/%s: %w", s.namespace, NextSecret, err)
	}
	return nil
}

// deleteNext deletes the pending bundle once nothing needs it (its phase is
// proven, or the rotation was rolled back): it holds a copy of a CA private
// key, and a key kept where it is not needed is a key that can leak. Only a
// Secret holding signer is deleted (with its resourceVersion as
// precondition): a pending bundle of another rotation is left alone. It
// reports whether a Secret was deleted.
func (s store) deleteNext(ctx context.Context, signer string) (bool, error) {
	secrets := s.client.CoreV1().Secrets(s.namespace)
	sec, err := secrets.Get(ctx, NextSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read secret %s/%s: %w", s.namespace, NextSecret, err)
	}
	b, err := bundle.FromSecretData("secret "+s.namespace+"/"+NextSecret, sec.Data)
	if err != nil {
		return false, err
	}
	p, err := b.Parse()
	if err != nil || pki.Fingerprint(p.Signer) != signer {
		return false, nil
	}
	err = secrets.Delete(ctx, NextSecret, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &sec.ResourceVersion}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete secret %s/%s: %w", s.namespace, NextSecret, err)
	}
	return true, nil
}

// pendingFromCACerts rebuilds the pending bundle of rotation r from cacerts
// once cacerts signs with the new intermediate (so Secret NextSecret, a
// second copy of that key, is no longer kept): the signer, key and chain of
// cacerts, and the new root's exact bytes from its root-cert.pem.
func pendingFromCACerts(cur *bundle.Bundle, r *Record) (*bundle.Bundle, error) {
	roots, err := cur.ParseRoots()
	if err != nil {
		return nil, err
	}
	blocks, err := pki.DecodeBlocks(cur.Source, cur.RootCert)
	if err != nil {
		return nil, err
	}
	for _, root := range roots {
		if pki.Fingerprint(root) != r.NewRoot {
			continue
		}
		for _, b := range blocks {
			if bytes.Equal(b.Bytes, root.Raw) {
				next := cur.Clone()
				next.RootCert = bytes.Clone(cur.RootCert[b.Start:b.End])
				next.Source = "the new CA as cacerts holds it"
				return next, nil
			}
		}
	}
	return nil, fmt.Errorf("secret %s: root-cert.pem does not hold the new root %.12s recorded in configmap %s", CACertsSecret, r.NewRoot, RecordName)
}

// readRecord returns the rotation record, or nil when there is none.
func (s store) readRecord(ctx context.Context) (*Record, error) {
	return ReadRecord(ctx, s.client, s.namespace)
}

// ReadRecord reads the rotation record (ConfigMap RecordName in the Istio
// namespace), or nil when there is none. It is the one reader of the record
// for the engine and for read-only users such as the exporter.
func ReadRecord(ctx context.Context, client kubernetes.Interface, namespace string) (*Record, error) {
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, RecordName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read configmap %s/%s: %w", namespace, RecordName, err)
	}
	var r Record
	if err := json.Unmarshal([]byte(cm.Data[recordKey]), &r); err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %s is not a rotation record: %w", namespace, RecordName, recordKey, err)
	}
	r.resourceVersion = cm.ResourceVersion
	return &r, nil
}

// writeRecord creates or updates the record with optimistic concurrency.
func (s store) writeRecord(ctx context.Context, r *Record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: RecordName, Namespace: s.namespace, Labels: map[string]string{LabelManagedBy: managedBy}, ResourceVersion: r.resourceVersion},
		Data:       map[string]string{recordKey: string(data)},
	}
	cms := s.client.CoreV1().ConfigMaps(s.namespace)
	var out *corev1.ConfigMap
	if r.resourceVersion == "" {
		out, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("configmap %s/%s changed concurrently: is another meshca rotate running against this cluster? %w", s.namespace, RecordName, err)
	}
	if err != nil {
		return fmt.Errorf("write configmap %s/%s: %w", s.namespace, RecordName, err)
	}
	r.resourceVersion = out.ResourceVersion
	return nil
}
