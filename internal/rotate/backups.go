package rotate

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
)

// Backup is one backup Secret of cacerts, as `meshca backups list` shows it
// (fingerprints only: the key it holds never leaves the Secret).
type Backup struct {
	Cluster string `json:"cluster"`
	Name    string `json:"name"`
	// Of is the Secret it backs up: cacerts, or istio-ca-secret (the
	// self-signed CA a migration replaced).
	Of string `json:"of"`
	// RotationID is the rotation that took it ("" for backups taken before
	// meshca named rotations).
	RotationID string    `json:"rotationId,omitempty"`
	Created    time.Time `json:"created"`
	// Roots and Signer are the fingerprints of the backed-up CA.
	Roots  []string `json:"roots"`
	Signer string   `json:"signer"`
	// Use says what refers to it: "rotation in progress" (it cannot be
	// pruned), "last rotation (complete)", "last rotation (rolled back)" or
	// "".
	Use string `json:"use,omitempty"`
	// InProgress is set for the backup of a rotation still in progress.
	InProgress bool `json:"inProgress"`
	// Err says why its content could not be read.
	Err string `json:"error,omitempty"`
}

// Backups lists every cluster's backups (of cacerts, and of istio-ca-secret
// taken by a migration), newest first.
func (e *Engine) Backups(ctx context.Context) ([]Backup, error) {
	var out []Backup
	for _, c := range e.clusters {
		bs, err := e.backups(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		out = append(out, bs...)
	}
	return out, nil
}

func (e *Engine) backups(ctx context.Context, c *Cluster) ([]Backup, error) {
	list, err := c.Client.CoreV1().Secrets(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labelBackupOf + " in (" + CACertsSecret + "," + mesh.SelfSignedSecret + ")"})
	if err != nil {
		return nil, fmt.Errorf("list backup secrets in %s: %w", c.Namespace, err)
	}
	st, err := e.load(ctx, c, false)
	if err != nil {
		return nil, err
	}
	var out []Backup
	for i := range list.Items {
		out = append(out, describeBackup(c.Name, &list.Items[i], st))
	}
	slices.SortFunc(out, func(a, b Backup) int {
		return cmp.Or(b.Created.Compare(a.Created), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

func describeBackup(cluster string, sec *corev1.Secret, st *state) Backup {
	b := Backup{Cluster: cluster, Name: sec.Name, RotationID: sec.Labels[labelRotationID], Created: sec.CreationTimestamp.UTC()}
	if t, err := time.Parse(time.RFC3339, sec.Annotations[annotationBackupTaken]); err == nil {
		b.Created = t.UTC()
	}
	b.Of = sec.Labels[labelBackupOf]
	if b.Of == mesh.SelfSignedSecret {
		// istio-ca-secret: the self-signed CA signs and is the root.
		if certs, err := pki.ParseCertificates("secret "+sec.Namespace+"/"+sec.Name+"[ca-cert.pem]", sec.Data[bundle.CACertFile]); err != nil {
			b.Err = err.Error()
		} else {
			b.Roots, b.Signer = []string{pki.Fingerprint(certs[0])}, pki.Fingerprint(certs[0])
		}
	} else if bun, err := bundle.FromSecretData("secret "+sec.Namespace+"/"+sec.Name, sec.Data); err != nil {
		b.Err = err.Error()
	} else if p, err := bun.Parse(); err != nil {
		b.Err = err.Error()
	} else {
		b.Roots, b.Signer = uniqueFPs(p.Roots), pki.Fingerprint(p.Signer)
	}
	if r := st.record; r != nil && r.BackupSecret == sec.Name {
		switch {
		case inProgress(r, st.phase) && st.phase != PhaseRolledBack:
			b.Use, b.InProgress = "rotation in progress (phase "+string(st.phase)+")", true
		case r.RolledBack != nil:
			b.Use = "last rotation (rolled back)"
		default:
			b.Use = "last rotation (complete)"
		}
	}
	return b
}

// PruneResult is what `meshca backups prune` did (or would do, dry run).
type PruneResult struct {
	Deleted []Backup `json:"deleted"`
	Kept    []Backup `json:"kept"`
	// Protected are backups beyond --keep that were kept because their
	// rotation is still in progress.
	Protected []Backup `json:"protected,omitempty"`
}

// PruneBackups deletes, in every cluster, the backups beyond the newest
// keep, never the backup of a rotation still in progress (a rollback needs
// it). With dryRun nothing is deleted. A prune holds the rotation lock, so
// that a rotation starting meanwhile cannot lose its fresh backup; each
// delete carries the Secret's resourceVersion as precondition.
func (e *Engine) PruneBackups(ctx context.Context, keep int, dryRun bool) (*PruneResult, error) {
	if keep < 0 {
		return nil, fmt.Errorf("--keep %d: give the number of newest backups to keep (0 or more)", keep)
	}
	if !dryRun {
		lctx, unlock, err := e.startLocked(ctx)
		if err != nil {
			return nil, err
		}
		defer unlock()
		ctx = lctx
	}
	res := &PruneResult{}
	for _, c := range e.clusters {
		bs, err := e.backups(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		for i, b := range bs {
			switch {
			case i < keep:
				res.Kept = append(res.Kept, b)
			case b.InProgress:
				res.Protected = append(res.Protected, b)
			default:
				if !dryRun {
					if err := deleteBackup(ctx, c, b.Name); err != nil {
						return res, err
					}
				}
				res.Deleted = append(res.Deleted, b)
			}
		}
	}
	return res, nil
}

func deleteBackup(ctx context.Context, c *Cluster, name string) error {
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	sec, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read backup secret %s/%s: %w", c.Namespace, name, err)
	}
	if of := sec.Labels[labelBackupOf]; of != CACertsSecret && of != mesh.SelfSignedSecret {
		return fmt.Errorf("secret %s/%s is not a meshca backup (label %s missing): not deleted", c.Namespace, name, labelBackupOf)
	}
	err = secrets.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &sec.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete backup secret %s/%s: %w", c.Namespace, name, err)
	}
	return nil
}
