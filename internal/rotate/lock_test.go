package rotate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestLockAdmitsOneRotationAtATime(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	a, err := acquireLock(ctx, cs, "istio-system", "host/1/aaa", "rootA", now, false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = acquireLock(ctx, cs, "istio-system", "host/2/bbb", "rootB", now.Add(lockDuration/2), false)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by host/1/aaa (rotating to root rootA") {
		t.Fatalf("second run: %v, want ErrLocked naming the holder and its root", err)
	}
	if err := a.renew(ctx, now.Add(lockDuration)); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", "host/2/bbb", "rootB", now.Add(lockDuration+lockDuration/2), false); !errors.Is(err, ErrLocked) {
		t.Fatalf("a renewed lock was taken over: %v", err)
	}
	// The holder stops renewing: after lockDuration the lock is taken over,
	// and the former holder learns it lost the lock.
	b, err := acquireLock(ctx, cs, "istio-system", "host/2/bbb", "rootB", now.Add(2*lockDuration+time.Second), false)
	if err != nil {
		t.Fatalf("expired lock not taken over: %v", err)
	}
	if err := a.renew(ctx, now.Add(3*lockDuration)); !errors.Is(err, ErrLockLost) || !strings.Contains(err.Error(), "host/2/bbb") {
		t.Errorf("former holder's renew: %v, want ErrLockLost naming the new holder", err)
	}
	if err := a.release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoordinationV1().Leases("istio-system").Get(ctx, LockName, metav1.GetOptions{}); err != nil {
		t.Fatalf("the former holder's release deleted the new holder's lease: %v", err)
	}
	if err := b.release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", "host/3/ccc", "rootC", now.Add(3*lockDuration), false); err != nil {
		t.Errorf("after release: %v", err)
	}
}

func TestLockOfADeadLocalRunIsTakenOverAtOnce(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	now := time.Now()
	host, _ := os.Hostname()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip("no `true` to make a dead pid:", err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", fmt.Sprintf("%s/%d/dead", host, dead.Process.Pid), "rootA", now, false); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", holderID(), "rootA", now.Add(time.Second), false); err != nil {
		t.Errorf("the lock of a process that no longer exists on this host was not taken over: %v", err)
	}
	alive := fmt.Sprintf("%s/%d/live", host, os.Getppid())
	cs = fake.NewClientset()
	if _, err := acquireLock(ctx, cs, "istio-system", alive, "rootA", now, false); err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", holderID(), "rootA", now.Add(time.Second), false); !errors.Is(err, ErrLocked) {
		t.Errorf("the lock of a live local process was taken over: %v", err)
	}
}

func TestBreakLockTakesOverALiveHolderAndStatusShowsWhoHoldsIt(t *testing.T) {
	ctx := context.Background()
	cs := fake.NewClientset()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	if info, err := ReadLock(ctx, cs, "istio-system", now); err != nil || info != nil {
		t.Fatalf("no lease: ReadLock = %+v, %v; want nil, nil", info, err)
	}
	a, err := acquireLock(ctx, cs, "istio-system", "host/1/aaa", "rootA", now, false)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ReadLock(ctx, cs, "istio-system", now.Add(time.Second))
	if err != nil || info == nil || info.Holder != "host/1/aaa" || info.Root != "rootA" || info.Expired || !info.Renewed.Equal(now) {
		t.Fatalf("ReadLock = %+v, %v; want the live holder host/1/aaa rotating to rootA", info, err)
	}
	if info, _ := ReadLock(ctx, cs, "istio-system", now.Add(2*lockDuration)); info == nil || !info.Expired {
		t.Errorf("a lease not renewed for 2×%s is not shown as expired: %+v", lockDuration, info)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", "host/2/bbb", "rootB", now.Add(time.Second), false); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "--break-lock") {
		t.Fatalf("without --break-lock: %v, want ErrLocked that names --break-lock", err)
	}
	if _, err := acquireLock(ctx, cs, "istio-system", "host/2/bbb", "rootB", now.Add(time.Second), true); err != nil {
		t.Fatalf("--break-lock did not take the live lock over: %v", err)
	}
	if err := a.renew(ctx, now.Add(2*time.Second)); !errors.Is(err, ErrLockLost) {
		t.Errorf("the broken holder's renew: %v, want ErrLockLost so that it stops before its next write", err)
	}
}
