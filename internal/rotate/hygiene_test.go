package rotate_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// TestTwoRotationsStartedTogether: two runs with different roots start at
// the same moment. Exactly one proceeds; the other is refused before it
// writes anything, naming the holder; the winner completes under probe
// traffic with 0 failed handshakes, and no Secret holds the loser's CA.
func TestTwoRotationsStartedTogether(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	roots := []*pki.CA{newRoot(t), newRoot(t)}
	logs := make([]bytes.Buffer, 2)
	errs := make([]error, 2)
	s.ResetProbe()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range roots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = rotate.New([]*rotate.Cluster{tg.cluster}, options(roots[i], bundle.PhaseRetire, &logs[i])).Run(ctx)
		}()
	}
	close(start)
	wg.Wait()
	winner, loser := 0, 1
	if errs[0] != nil {
		winner, loser = 1, 0
	}
	if errs[winner] != nil {
		t.Fatalf("neither run completed:\nrun 1: %v\n%s\nrun 2: %v\n%s", errs[0], logs[0].String(), errs[1], logs[1].String())
	}
	if !errors.Is(errs[loser], rotate.ErrLocked) || !strings.Contains(errs[loser].Error(), "held by ") {
		t.Fatalf("the losing run: %v, want ErrLocked naming the holder\n%s", errs[loser], logs[loser].String())
	}
	t.Logf("the losing run was refused: %v", errs[loser])
	tg.assertFinal(t, roots[winner])
	assertNoFailures(t, s, "two rotations started together")
	// No Secret of the Istio namespace holds the loser's root or a signer
	// under it.
	secrets, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range secrets.Items {
		for key, data := range sec.Data {
			certs, err := pki.ParseCertificates(sec.Name+"/"+key, data)
			if err != nil {
				continue
			}
			for _, c := range certs {
				if c.Equal(roots[loser].Cert) || c.CheckSignatureFrom(roots[loser].Cert) == nil {
					t.Errorf("secret %s[%s] holds the losing run's CA (%s)", sec.Name, key, c.Subject)
				}
			}
		}
	}
}

// TestKeyHygiene: the pending bundle (a copy of the new intermediate's key)
// lives only until its phase is proven or the rotation is rolled back;
// backups are named per rotation, listed with what uses them, and pruned
// without ever losing the backup of a rotation in progress.
func TestKeyHygiene(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 1, Workloads: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	eng := func(root *pki.CA, until bundle.Phase, log *bytes.Buffer) *rotate.Engine {
		return rotate.New([]*rotate.Cluster{tg.cluster}, options(root, until, log))
	}
	nextExists := func() bool {
		_, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(ctx, rotate.NextSecret, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	backups := func() []rotate.Backup {
		bs, err := eng(nil, "", &bytes.Buffer{}).Backups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return bs
	}
	var log bytes.Buffer
	s.ResetProbe()

	// Rotation A stops after trust: its pending bundle is needed.
	if err := eng(newRoot(t), bundle.PhaseTrust, &log).Run(ctx); err != nil {
		t.Fatalf("rotate A: %v\n%s", err, log.String())
	}
	if !nextExists() {
		t.Fatalf("secret %s is gone while rotation A still needs it for its issue phase", rotate.NextSecret)
	}
	a := readRecord(t, tg)
	if a.ID == "" || a.BackupSecret != rotate.BackupPrefix+a.ID {
		t.Errorf("record of rotation A: id %q, backup %q; want the backup named %s<id>", a.ID, a.BackupSecret, rotate.BackupPrefix)
	}
	// Rolled back: the copy of A's key goes, cacerts is the original again.
	if err := eng(nil, "", &log).Rollback(ctx); err != nil {
		t.Fatalf("rollback A: %v\n%s", err, log.String())
	}
	if nextExists() {
		t.Errorf("secret %s (A's intermediate key) was kept after the rollback", rotate.NextSecret)
	}
	if !tg.cacerts(t).Equal(tg.original) {
		t.Fatal("cacerts is not the original after rolling back A")
	}

	// Rotation B starts from the very same bytes: its own backup, not A's.
	rootB := newRoot(t)
	if err := eng(rootB, bundle.PhaseTrust, &log).Run(ctx); err != nil {
		t.Fatalf("rotate B: %v\n%s", err, log.String())
	}
	b := readRecord(t, tg)
	if b.BackupSecret == a.BackupSecret || b.ID == a.ID {
		t.Errorf("two rotations from the same bytes share backup %s", b.BackupSecret)
	}
	bs := backups()
	if len(bs) != 2 || bs[0].Name != b.BackupSecret || !bs[0].InProgress || bs[1].Name != a.BackupSecret || bs[1].InProgress {
		t.Fatalf("backups list = %+v; want B's (in progress) then A's", bs)
	}
	for _, bk := range bs {
		if bk.Signer != pki.Fingerprint(mustParse(t, tg.original).Signer) || bk.RotationID == "" {
			t.Errorf("backup %s: signer %.12s, rotation %q; want the original signer and a rotation id", bk.Name, bk.Signer, bk.RotationID)
		}
	}
	// Prune everything: A's goes, B's stays (its rotation is in progress).
	res, err := eng(nil, "", &log).PruneBackups(ctx, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Deleted) != 1 || res.Deleted[0].Name != a.BackupSecret || len(res.Protected) != 1 || res.Protected[0].Name != b.BackupSecret {
		t.Fatalf("prune --keep 0 during rotation B: deleted %v, protected %v; want A's deleted and B's protected", names(res.Deleted), names(res.Protected))
	}
	if !tg.backup(t, b.BackupSecret).Equal(tg.original) {
		t.Error("B's backup changed")
	}

	// B completes: its pending bundle goes once issue is proven; its
	// backup is no longer protected.
	if err := eng(rootB, bundle.PhaseRetire, &log).Run(ctx); err != nil {
		t.Fatalf("finish B: %v\n%s", err, log.String())
	}
	tg.assertFinal(t, rootB)
	if nextExists() {
		t.Errorf("secret %s (a second copy of the live signing key) was kept after the rotation", rotate.NextSecret)
	}
	if !strings.Contains(log.String(), "deleted secret istio-system/"+rotate.NextSecret) {
		t.Errorf("the run did not say it deleted %s:\n%s", rotate.NextSecret, log.String())
	}
	if bs := backups(); len(bs) != 1 || bs[0].InProgress || bs[0].Use != "last rotation (complete)" {
		t.Errorf("after B: backups %+v; want B's, used by the last rotation (complete)", bs)
	}
	if res, err := eng(nil, "", &log).PruneBackups(ctx, 0, true); err != nil || len(res.Deleted) != 1 {
		t.Errorf("dry run after B: %+v, %v; want B's listed for deletion", res, err)
	}
	if bs := backups(); len(bs) != 1 {
		t.Errorf("a dry run deleted a backup: %d left", len(bs))
	}
	assertNoFailures(t, s, "two rotations, a rollback and prunes")
}

func names(bs []rotate.Backup) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	return out
}

// TestRollbackResumedAfterItsStepBackKeepsEveryLeafTrusted: a rollback from
// the issue phase is interrupted right after it stepped back to the old
// signer (both roots still trusted), while ztunnels still hold leaves from
// the new intermediate. Run again, rollback must not drop the new root
// before those leaves are replaced; the probe stays at 0 failures and the
// final cacerts is the backup byte for byte.
func TestRollbackResumedAfterItsStepBackKeepsEveryLeafTrusted(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	var log bytes.Buffer
	s.ResetProbe()
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(t), bundle.PhaseIssue, &log)).Run(ctx); err != nil {
		t.Fatalf("rotate until issue: %v\n%s", err, log.String())
	}
	// Interrupt the rollback right after its first write (the step back).
	rctx, cancel := context.WithCancel(ctx)
	opts := options(nil, "", &log)
	opts.Observer = rotate.ObserverFunc(func(ev rotate.Event) {
		logTo(&log).Observe(ev)
		if ev.Kind == rotate.EventPhaseWritten {
			cancel()
		}
	})
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, opts).Rollback(rctx); err == nil {
		t.Fatalf("the interrupted rollback completed:\n%s", log.String())
	}
	cancel()
	if got := tg.cacerts(t); got.Equal(tg.original) || pki.Fingerprint(mustParse(t, got).Signer) != pki.Fingerprint(mustParse(t, tg.original).Signer) || len(mustParse(t, got).Roots) < 2 {
		t.Fatalf("after the interruption cacerts is not the step back (old signer, both roots)")
	}
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(nil, "", &log)).Rollback(ctx); err != nil {
		t.Fatalf("rollback resumed: %v\n%s", err, log.String())
	}
	if !tg.cacerts(t).Equal(tg.original) {
		t.Error("cacerts after the rollback is not the backup byte for byte")
	}
	if !strings.Contains(log.String(), "✓ rolled back: cacerts equals secret") {
		t.Errorf("the rollback did not report what it read back:\n%s", log.String())
	}
	t.Log(log.String())
	assertNoFailures(t, s, "rollback interrupted after its step back, then resumed")
}

// TestRotationNamesAnAPIServerThatStopped: the API server stops answering
// (SIGSTOP) right after the trust write, while the run waits for istiod and
// the fleet. The run stops within seconds with an error that names the API
// server, what it had written and how to resume, not a timeout minutes
// later; resumed once the server answers, it completes.
func TestRotationNamesAnAPIServerThatStopped(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 1, Workloads: 2}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	apiserver, err := os.FindProcess(s.Cluster().Pids()[cluster.APIServer])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = apiserver.Signal(syscall.SIGCONT) })
	root := newRoot(t)
	var log bytes.Buffer
	var stopped time.Time
	opts := options(root, bundle.PhaseRetire, &log)
	opts.Observer = rotate.ObserverFunc(func(ev rotate.Event) {
		logTo(&log).Observe(ev)
		if ev.Kind == rotate.EventPhaseWritten && stopped.IsZero() {
			if err := apiserver.Signal(syscall.SIGSTOP); err != nil {
				t.Error(err)
			}
			stopped = time.Now()
		}
	})
	err = rotate.New([]*rotate.Cluster{tg.cluster}, opts).Run(ctx)
	took := time.Since(stopped)
	if err := apiserver.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	var lost *kube.APIUnreachableError
	if !errors.As(err, &lost) {
		t.Fatalf("run = %v, want a *kube.APIUnreachableError\n%s", err, log.String())
	}
	for _, want := range []string{"this run had written to cacerts: cluster sandbox: phase trust", "re-run the same command", "the command to re-run: meshca rotate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	t.Logf("the API server was named %.1fs after it stopped: %v", took.Seconds(), err)
	// Resumed: this test's process still "holds" the lock it could not
	// release while the API server was stopped (a new meshca process would
	// take over a dead local holder at once), so it breaks it.
	opts = options(root, bundle.PhaseRetire, &log)
	opts.BreakLock = true
	if err := rotate.New([]*rotate.Cluster{tg.cluster}, opts).Run(ctx); err != nil {
		t.Fatalf("resumed run: %v\n%s", err, log.String())
	}
	tg.assertFinal(t, root)
}
