package rotate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/kube"
)

// LockName is the Lease in the Istio namespace that makes one rotation at a
// time per cluster: a second `meshca rotate` sees it before it writes
// anything.
const LockName = "meshca-rotation-lock"

// lockRootAnnotation records on the Lease the root the holder rotates to.
const lockRootAnnotation = "meshca.io/new-root"

// Lock timing: the holder renews every lockRenew; a holder that stopped
// renewing (crashed, killed, lost its network) is taken over lockDuration
// after its last renewal.
const (
	lockDuration = 30 * time.Second
	lockRenew    = 10 * time.Second
)

// ErrLocked is wrapped by the error of a rotation refused because another
// one holds the cluster's lock.
var ErrLocked = errors.New("another meshca rotation is running on this cluster")

// ErrLockLost is the cause of the context of a rotation whose lock was taken
// over or could not be renewed: it stops before its next write.
var ErrLockLost = errors.New("the rotation lock was lost")

// lock is a held Lease.
type lock struct {
	client    kubernetes.Interface
	namespace string
	holder    string
}

// holderID names this process for the Lease: host, pid and a random suffix.
func holderID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), rand.String(6))
}

// deadLocalHolder reports whether holder names a process of this host that
// no longer exists (a run killed or crashed here): its lock can be taken over
// at once instead of after lockDuration, so a re-run resumes right away.
func deadLocalHolder(holder string) bool {
	host, _ := os.Hostname()
	parts := strings.Split(holder, "/")
	if len(parts) != 3 || parts[0] != host {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return !processAlive(pid)
}

// acquireLock takes the rotation Lease of namespace for holder, rotating to
// root (a fingerprint, may be empty). A Lease held by another holder and
// renewed within its duration refuses with ErrLocked, naming the holder;
// an expired one is taken over with optimistic concurrency, so of two runs
// taking it over at once only one wins. breakLock takes over a live holder's
// Lease too (--break-lock: the operator knows that run is gone).
func acquireLock(ctx context.Context, client kubernetes.Interface, namespace, holder, root string, now time.Time, breakLock bool) (*lock, error) {
	leases := client.CoordinationV1().Leases(namespace)
	l := &lock{client: client, namespace: namespace, holder: holder}
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: LockName, Namespace: namespace, Annotations: map[string]string{lockRootAnnotation: root}},
			Spec:       leaseSpec(holder, now, now),
		}
		if _, err := leases.Create(ctx, lease, metav1.CreateOptions{}); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return nil, takenMeanwhile(ctx, client, namespace, now)
			}
			return nil, fmt.Errorf("create lease %s/%s: %w", namespace, LockName, err)
		}
		return l, nil
	case err != nil:
		return nil, fmt.Errorf("read lease %s/%s: %w", namespace, LockName, err)
	}
	if h := ptr.Deref(cur.Spec.HolderIdentity, ""); h != "" && h != holder && !expired(cur, now) && !deadLocalHolder(h) && !breakLock {
		return nil, heldBy(cur, now)
	}
	cur = cur.DeepCopy()
	acquired := now
	if ptr.Deref(cur.Spec.HolderIdentity, "") == holder && cur.Spec.AcquireTime != nil {
		acquired = cur.Spec.AcquireTime.Time
	}
	cur.Spec = leaseSpec(holder, acquired, now)
	if cur.Annotations == nil {
		cur.Annotations = map[string]string{}
	}
	cur.Annotations[lockRootAnnotation] = root
	if _, err := leases.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return nil, takenMeanwhile(ctx, client, namespace, now)
		}
		return nil, fmt.Errorf("take over lease %s/%s: %w", namespace, LockName, err)
	}
	return l, nil
}

// heldBy is the refusal of a run that finds the lock held: who holds it,
// for which root, and what to do.
func heldBy(cur *coordinationv1.Lease, now time.Time) error {
	renewed := "never renewed"
	if cur.Spec.RenewTime != nil {
		renewed = "renewed " + now.Sub(cur.Spec.RenewTime.Time).Round(time.Second).String() + " ago"
	}
	return fmt.Errorf("lease %s/%s: %w: held by %s (rotating to root %.12s, %s, taken over %s after its last renewal if it stops); wait for it to finish, nothing was changed (if that run is gone for good, --break-lock takes the lock over)",
		cur.Namespace, LockName, ErrLocked, ptr.Deref(cur.Spec.HolderIdentity, ""), cur.Annotations[lockRootAnnotation], renewed, lockDuration)
}

// takenMeanwhile is the refusal of a run that lost the race to create or
// take over the lock: it reads the winner back to name it.
func takenMeanwhile(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) error {
	cur, err := client.CoordinationV1().Leases(namespace).Get(ctx, LockName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("lease %s/%s: %w: another run took it a moment ago; run meshca status", namespace, LockName, ErrLocked)
	}
	return heldBy(cur, now)
}

func leaseSpec(holder string, acquired, renewed time.Time) coordinationv1.LeaseSpec {
	return coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(holder),
		LeaseDurationSeconds: ptr.To(int32(lockDuration / time.Second)),
		AcquireTime:          &metav1.MicroTime{Time: acquired},
		RenewTime:            &metav1.MicroTime{Time: renewed},
	}
}

// expired reports whether a Lease's holder stopped renewing it.
func expired(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil {
		return true
	}
	d := time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, int32(lockDuration/time.Second))) * time.Second
	return now.After(l.Spec.RenewTime.Add(d))
}

// LockInfo is who holds a cluster's rotation lock, for `meshca status`.
type LockInfo struct {
	// Holder is host/pid/suffix of the run that holds it.
	Holder string `json:"holder"`
	// Root is the fingerprint of the root that run rotates to ("" when it
	// did not know it yet: a rollback).
	Root string `json:"root,omitempty"`
	// Acquired and Renewed are the Lease's times.
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
	// Expired is set when the holder stopped renewing: the next run takes
	// the lock over.
	Expired bool `json:"expired"`
}

// ReadLock returns the holder of namespace's rotation lock, or nil when no
// run holds it.
func ReadLock(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) (*LockInfo, error) {
	l, err := client.CoordinationV1().Leases(namespace).Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease %s/%s: %w", namespace, LockName, err)
	}
	h := ptr.Deref(l.Spec.HolderIdentity, "")
	if h == "" {
		return nil, nil
	}
	info := &LockInfo{Holder: h, Root: l.Annotations[lockRootAnnotation], Expired: expired(l, now) || deadLocalHolder(h)}
	if l.Spec.AcquireTime != nil {
		info.Acquired = l.Spec.AcquireTime.UTC()
	}
	if l.Spec.RenewTime != nil {
		info.Renewed = l.Spec.RenewTime.UTC()
	}
	return info, nil
}

// renew extends the Lease, only while this holder still holds it.
func (l *lock) renew(ctx context.Context, now time.Time) error {
	leases := l.client.CoordinationV1().Leases(l.namespace)
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("renew lease %s/%s: %w", l.namespace, LockName, err)
	}
	if h := ptr.Deref(cur.Spec.HolderIdentity, ""); h != l.holder {
		return fmt.Errorf("lease %s/%s is now held by %s: %w", l.namespace, LockName, h, ErrLockLost)
	}
	cur = cur.DeepCopy()
	cur.Spec.RenewTime = &metav1.MicroTime{Time: now}
	if _, err := leases.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease %s/%s: %w", l.namespace, LockName, err)
	}
	return nil
}

// release deletes the Lease if this holder still holds it (with its
// resourceVersion as precondition, so a takeover is never deleted).
func (l *lock) release(ctx context.Context) error {
	leases := l.client.CoordinationV1().Leases(l.namespace)
	cur, err := leases.Get(ctx, LockName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, LockName, err)
	}
	if ptr.Deref(cur.Spec.HolderIdentity, "") != l.holder {
		return nil
	}
	err = leases.Delete(ctx, LockName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &cur.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release lease %s/%s: %w", l.namespace, LockName, err)
	}
	return nil
}

// startLocked begins a run that writes (rotate, rollback): its clock starts
// and it holds every cluster's rotation lock until unlock.
func (e *Engine) startLocked(ctx context.Context) (context.Context, func(), error) {
	e.started = e.opts.Now()
	return e.lockClusters(ctx)
}

// lockClusters takes the rotation lock of every cluster before anything is
// written, and keeps renewing them. The returned context is cancelled with
// ErrLockLost when a lock cannot be renewed twice in a row; unlock stops
// renewing and releases every lock.
func (e *Engine) lockClusters(ctx context.Context) (context.Context, func(), error) {
	holder := holderID()
	var held []*lock
	unlockAll := func() {
		// Release even when ctx is cancelled (Ctrl-C): a fresh context,
		// bounded.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, l := range held {
			if err := l.release(rctx); err != nil {
				e.emit(Event{Kind: EventNote, Detail: err.Error()})
			}
		}
	}
	for _, c := range e.clusters {
		l, err := acquireLock(ctx, c.Client, c.Namespace, holder, e.lockRoot(c), e.opts.Now(), e.opts.BreakLock)
		if err != nil {
			unlockAll()
			return nil, nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		held = append(held, l)
	}
	// Every wait of the run (istiod reloads, fleet proofs, rollouts) stops
	// within seconds when an API server stops answering, instead of
	// running into its own timeout.
	var stops []context.CancelFunc
	for _, c := range e.clusters {
		var stop context.CancelFunc
		ctx, stop = kube.MonitorAPI(ctx, c.Client, kube.HealthOptions{})
		stops = append(stops, stop)
	}
	lctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(lockRenew)
		defer t.Stop()
		failures := map[*lock]int{}
		for {
			select {
			case <-done:
				return
			case <-lctx.Done():
				return
			case <-t.C:
			}
			for _, l := range held {
				err := l.renew(lctx, e.opts.Now())
				switch {
				case err == nil:
					failures[l] = 0
				case errors.Is(err, ErrLockLost):
					cancel(err)
					return
				default:
					if failures[l]++; failures[l] >= 2 {
						cancel(fmt.Errorf("%w: %w", ErrLockLost, err))
						return
					}
				}
			}
		}
	}()
	return lctx, func() {
		close(done)
		unlockAll()
		cancel(context.Canceled)
		for _, stop := range stops {
			stop()
		}
	}, nil
}

// explainAPILoss turns the error of a run stopped because an API server
// stopped answering into one that says so, with what the run had already
// written and how to resume: the phase is derived from cacerts, so the
// same command continues from there.
func (e *Engine) explainAPILoss(ctx context.Context, err error, command string) error {
	if err == nil {
		return nil
	}
	var lost *kube.APIUnreachableError
	if !errors.As(kube.UnreachableCause(ctx, err), &lost) {
		return err
	}
	written := "nothing was written to cacerts by this run"
	if w := e.summary.Written; len(w) > 0 {
		written = "this run had written to cacerts: " + strings.Join(w, "; ")
	}
	return fmt.Errorf("%w (%s; the command to re-run: %s)", lost, written, command)
}

// lockRoot is the root a run for c rotates to, as the lock shows it to a
// second run ("" when not known before the state is read).
func (e *Engine) lockRoot(c *Cluster) string {
	t, _, err := e.targetOf(c)
	if err != nil {
		return ""
	}
	return t.Root
}
