package rotate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/mesh"
)

// This file holds the migration from istiod's self-signed CA (Secret
// istio-ca-secret, no cacerts) to a plug-in CA. It is a rotation whose old
// CA is read from istio-ca-secret: the trust phase creates cacerts with the
// self-signed CA still signing and root-cert.pem = the self-signed root's
// exact bytes followed by the new root, and restarts istiod once, since
// istiod does not hot-reload the switch from its self-signed CA to cacerts
// (istio-ca-facts.md §1, istio#57853); issue and retire are those of a
// rotation. istio-ca-secret itself is backed up and never written.

// errSelfSigned is wrapped by the error of a missing cacerts when istiod
// runs on its self-signed CA.
var errSelfSigned = errors.New("istiod uses its self-signed CA")

// ReasonSelfSignedSwitch is the restart reason of the migration: istiod does not hot-reload the switch from its
// self-signed CA to cacerts, so the migration's trust phase restarts it.
const ReasonSelfSignedSwitch = "self-signed-switch"

// selfSignedBackupPrefix starts the name of the backup of istio-ca-secret.
const selfSignedBackupPrefix = mesh.SelfSignedSecret + "-backup-"

// Migration reports whether the record is of a migration from istiod's
// self-signed CA rather than a rotation of cacerts.
func (r *Record) Migration() bool { return r != nil && r.From == mesh.SelfSignedSecret }

// migrationFrom is Record.From for a rotation whose old CA is
// istio-ca-secret (selfSigned) or cacerts.
func migrationFrom(selfSigned bool) string {
	if selfSigned {
		return mesh.SelfSignedSecret
	}
	return ""
}

// readSelfSigned reads istio-ca-secret as the cacerts bundle that keeps its
// CA signing: ca-cert.pem and ca-key.pem as they are, the self-signed
// certificate as cert-chain.pem (istiod 1.27+ refuses a bundle without one),
// and root-cert.pem with the exact bytes istiod distributes today (its
// root-cert.pem, or ca-cert.pem when that is empty), so that the trust
// phase appends the new root to them.
func (s store) readSelfSigned(ctx context.Context) (*bundle.Bundle, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, mesh.SelfSignedSecret, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", s.namespace, mesh.SelfSignedSecret, err)
	}
	return selfSignedBundle(s.namespace, sec.Data)
}

// selfSignedBundle is readSelfSigned's conversion of istio-ca-secret data.
func selfSignedBundle(namespace string, data map[string][]byte) (*bundle.Bundle, error) {
	src := "secret " + namespace + "/" + mesh.SelfSignedSecret
	cert, key := data[bundle.CACertFile], data[bundle.CAKeyFile]
	if len(bytes.TrimSpace(cert)) == 0 || len(bytes.TrimSpace(key)) == 0 {
		return nil, fmt.Errorf("%s lacks %s or %s: it is not istiod's self-signed CA; check the Secret (istiod recreates it only when it is absent)", src, bundle.CACertFile, bundle.CAKeyFile)
	}
	root := data[bundle.RootCertFile]
	if len(bytes.TrimSpace(root)) == 0 {
		root = cert
	}
	b, err := bundle.FromSecretData(src, map[string][]byte{
		bundle.CACertFile: cert, bundle.CAKeyFile: key, bundle.CertChainFile: cert, bundle.RootCertFile: root,
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// createCACerts creates cacerts (the migration's first write); it fails
// with ErrConcurrentEdit when someone created it meanwhile.
func (s store) createCACerts(ctx context.Context, b *bundle.Bundle) (string, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: CACertsSecret, Namespace: s.namespace},
		Type:       corev1.SecretTypeOpaque,
		Data:       b.SecretData(),
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("%w (secret %s/%s was created by someone else): nothing was overwritten; check who created it, then run meshca rotate again", ErrConcurrentEdit, s.namespace, CACertsSecret)
	}
	if err != nil {
		return "", fmt.Errorf("create secret %s/%s: %w", s.namespace, CACertsSecret, err)
	}
	return sec.ResourceVersion, nil
}

// deleteCACerts deletes cacerts, only if it is still at resourceVersion rv
// (the rollback of a migration: istiod returns to istio-ca-secret).
func (s store) deleteCACerts(ctx context.Context, rv string) error {
	err := s.client.CoreV1().Secrets(s.namespace).Delete(ctx, CACertsSecret, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case apierrors.IsConflict(err):
		return fmt.Errorf("%w (secret %s/%s): the delete was refused, nothing was changed; run meshca rollback again", ErrConcurrentEdit, s.namespace, CACertsSecret)
	case err != nil:
		return fmt.Errorf("delete secret %s/%s: %w", s.namespace, CACertsSecret, err)
	}
	return nil
}

// backupSelfSigned copies istio-ca-secret byte for byte into a backup
// Secret named and labelled like the backups of cacerts (rotation id: start
// time and content hash; label meshca.io/backup-of=istio-ca-secret), reusing
// the backup a crashed start left, and reads it back to prove the copy. It
// returns the Secret's name and the rotation id.
func (s store) backupSelfSigned(ctx context.Context, last *Record, now time.Time) (name, id string, err error) {
	src, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, mesh.SelfSignedSecret, metav1.GetOptions{})
	if err != nil {
		return "", "", fmt.Errorf("read secret %s/%s: %w", s.namespace, mesh.SelfSignedSecret, err)
	}
	return s.backupData(ctx, mesh.SelfSignedSecret, selfSignedBackupPrefix, src.Type, src.Data, last, now)
}

// leftoverSelfSigned refuses to start a rotation of cacerts while
// istio-ca-secret exists too and meshca has no record of how they came to
// coexist: it says which of the two istiod serves from (the roots its
// istio-ca-root-cert ConfigMap carries) and what to do. After a migration by
// meshca the record explains it, and the rotation goes ahead.
func (s store) leftoverSelfSigned(ctx context.Context, cacerts *bundle.Bundle) error {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, mesh.SelfSignedSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read secret %s/%s: %w", s.namespace, mesh.SelfSignedSecret, err)
	}
	self, err := selfSignedBundle(s.namespace, sec.Data)
	if err != nil {
		return err
	}
	switch mesh.ServingCA(ctx, s.client, s.namespace, cacerts.RootCert, self.RootCert) {
	case mesh.SelfSignedSecret:
		return fmt.Errorf("secrets %[1]s/%[2]s and %[1]s/%[3]s both exist and istiod serves from %[3]s (istio-ca-root-cert carries its root): cacerts was created but istiod was not restarted, and istiod does not hot-reload the switch (istio#57853); a rotation written into cacerts would not be seen. Nothing was changed. Either delete cacerts and let meshca migrate in phases (kubectl -n %[1]s delete secret %[2]s && meshca rotate --root DIR), or restart istiod to load cacerts (kubectl -n %[1]s rollout restart deployment/istiod) and run meshca rotate again",
			s.namespace, CACertsSecret, mesh.SelfSignedSecret)
	case CACertsSecret:
		return fmt.Errorf("secrets %[1]s/%[2]s and %[1]s/%[3]s both exist; istiod serves from %[2]s and %[3]s is unused, but istiod falls back to it whenever cacerts is missing at start, reviving a CA that no proxy trusts after a rotation. Nothing was changed. Back it up and delete it (kubectl -n %[1]s get secret %[3]s -o yaml > %[3]s.yaml && kubectl -n %[1]s delete secret %[3]s), then run meshca rotate again",
			s.namespace, CACertsSecret, mesh.SelfSignedSecret)
	}
	return fmt.Errorf("secrets %[1]s/%[2]s and %[1]s/%[3]s both exist and istio-ca-root-cert in namespace %[1]s matches neither, so which one istiod serves from is unknown. Nothing was changed. Check istiod's log (\"Use plugged-in cert\" or \"Use self-signed certificate\"), restart istiod so that it loads cacerts, and remove the one it does not use",
		s.namespace, CACertsSecret, mesh.SelfSignedSecret)
}

// startable refuses to start a rotation of a cacerts that has an
// unexplained istio-ca-secret next to it (leftoverSelfSigned); a migration,
// or a mesh meshca has a record of, starts.
func (e *Engine) startable(ctx context.Context, st *state) error {
	if st.selfSigned || st.record != nil {
		return nil
	}
	if err := st.s.leftoverSelfSigned(ctx, st.cur); err != nil {
		return fmt.Errorf("cluster %s: %w", st.c.Name, err)
	}
	return nil
}

// waitIstiodSwitch is the migration's trust phase at istiod: restart it
// right away unless it already serves from cacerts (a re-run after the
// restart), since it never hot-reloads the switch.
func (e *Engine) waitIstiodSwitch(ctx context.Context, st *state, want *bundle.Bundle, p Phase) error {
	if err := e.waitRootConfigMaps(ctx, st, want.RootCert, 2*time.Second); err == nil {
		return nil
	}
	e.emit(Event{Kind: EventNote, Cluster: st.c.Name, Phase: p,
		Detail: fmt.Sprintf("phase %s: istiod does not hot-reload the switch from its self-signed CA to cacerts (istio#57853); restarting it once", p)})
	return e.restartIstiod(ctx, st, p, ReasonSelfSignedSwitch)
}

// rollbackMigration returns a migration to istiod's self-signed CA: from
// issue back to the trust bundle (self-signed signer, both roots), then
// cacerts deleted, istiod restarted onto istio-ca-secret (never written)
// and the fleet proven on the self-signed root alone.
func (e *Engine) rollbackMigration(ctx context.Context, st *state) error {
	c := st.c
	switch st.phase {
	case PhaseRetire, PhaseComplete:
		return fmt.Errorf("refusing to roll back: the self-signed root is retired and every proxy trusts only the new root %.12s; returning to %s would make them reject every certificate istiod issues. Stay on cacerts, or rotate to another plug-in CA with meshca rotate",
			st.record.NewRoot, mesh.SelfSignedSecret)
	case PhaseRolledBack:
		e.emit(Event{Kind: EventNote, Cluster: c.Name, Detail: "already rolled back: istiod signs with its self-signed CA (secret " + mesh.SelfSignedSecret + ")"})
		return e.forgetNext(ctx, st)
	case PhaseIssue:
		self, err := st.s.readSelfSigned(ctx)
		if err != nil {
			return err
		}
		if st, err = e.stepBack(ctx, st, self); err != nil {
			return err
		}
		fallthrough
	case PhaseTrust:
		self, err := st.s.readSelfSigned(ctx)
		if err != nil {
			return err
		}
		if !st.selfSigned {
			// As in a rollback of a rotation: no proxy may keep a leaf of
			// the new intermediate once the new root is no longer trusted.
			if _, err := e.converge(ctx, st, PhaseTrust, st.cur.RootCert); err != nil {
				return fmt.Errorf("rollback: proxies still hold certificates from the new intermediate, so the new root cannot be dropped yet: %w", err)
			}
			if err := st.s.deleteCACerts(ctx, st.rv); err != nil {
				return err
			}
			e.emit(Event{Kind: EventPhaseWritten, Cluster: c.Name, Phase: PhaseNone, Object: c.Namespace + "/" + CACertsSecret,
				Detail: fmt.Sprintf("rollback to the self-signed CA: deleted secret %s/%s (istio-ca-secret untouched); istiod returns to it only when restarted", c.Namespace, CACertsSecret)})
		}
		if err := e.waitRootConfigMaps(ctx, st, self.RootCert, 2*time.Second); err != nil {
			if err := e.restartIstiod(ctx, st, PhaseNone, ReasonSelfSignedSwitch); err != nil {
				return err
			}
		}
		if err := e.waitIstiod(ctx, st, self, PhaseNone); err != nil {
			return err
		}
		if _, err := e.converge(ctx, st, PhaseNone, self.RootCert); err != nil {
			return err
		}
	case PhaseNone:
		e.emit(Event{Kind: EventNote, Cluster: c.Name, Detail: "istiod still signs with its self-signed CA"})
	}
	now := e.opts.Now().UTC()
	st.record.RolledBack = &now
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	if err := e.forgetNext(ctx, st); err != nil {
		return err
	}
	e.emit(Event{Kind: EventRolledBack, Cluster: c.Name, Object: c.Namespace + "/" + mesh.SelfSignedSecret,
		Detail: fmt.Sprintf("✓ rolled back to istiod's self-signed CA (secret %s/%s; backup %s)", c.Namespace, mesh.SelfSignedSecret, st.record.BackupSecret)})
	return nil
}
