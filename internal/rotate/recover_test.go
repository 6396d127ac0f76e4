package rotate_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// TestRecoverAnExpiredCA runs on a sandbox whose intermediate expires under
// probe traffic. Before expiry, recover refuses the healthy mesh and rotate
// refuses an unused istio-ca-secret next to cacerts, each changing nothing.
// After expiry the probe records failures; recover restores the mesh in one
// write and restarts, and the probe then records none. The time from the
// start of recover to the first successful handshake is reported.
func TestRecoverAnExpiredCA(t *testing.T) {
	const lifetime = 100 * time.Second
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 1, Workloads: 2, CA: sandbox.CAExpiring, CALifetime: lifetime}))
	tg := newTarget(t, s, "sandbox")
	ctx := context.Background()
	expiry := mustParse(t, tg.original).Signer.NotAfter
	var log bytes.Buffer
	recoverOpts := options(newRoot(t), "", &log)
	recoverOpts.ReloadTimeout = time.Minute
	t.Run("recover refuses a healthy mesh", func(t *testing.T) {
		assertRefused(t, s, func() error {
			_, err := rotate.New([]*rotate.Cluster{tg.cluster}, recoverOpts).Recover(ctx, rotate.RecoverOptions{})
			return err
		}, "refusing to recover a healthy CA", "meshca rotate --root DIR", "--force")
	})
	t.Run("rotate refuses an unused istio-ca-secret next to cacerts", func(t *testing.T) {
		other := newRoot(t)
		key, err := pki.EncodeKey(other.Key)
		if err != nil {
			t.Fatal(err)
		}
		secrets := s.Client().CoreV1().Secrets(sandbox.IstioNamespace)
		if _, err := secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: sandbox.SelfSignedSecret, Namespace: sandbox.IstioNamespace},
			Data:       map[string][]byte{"ca-cert.pem": pki.EncodeCert(other.Cert), "ca-key.pem": key, "root-cert.pem": pki.EncodeCert(other.Cert)},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := secrets.Delete(ctx, sandbox.SelfSignedSecret, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}()
		assertRefused(t, s, func() error {
			return rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(t), bundle.PhaseRetire, &log)).Run(ctx)
		}, "istiod serves from cacerts and istio-ca-secret is unused", "kubectl -n istio-system delete secret istio-ca-secret")
	})
	if time.Until(expiry) < 10*time.Second {
		t.Fatalf("the intermediate expires at %s, too soon after the refusals to watch it expire: raise the lifetime", expiry)
	}
	s.ResetProbe()
	// Wait for the expiry to break traffic.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Until(expiry)+time.Minute, false, func(context.Context) (bool, error) {
		return s.Probe().Failures > 0, nil
	}); err != nil {
		t.Fatalf("no failed handshake after the intermediate expired at %s", expiry)
	}
	broken := s.Probe()
	t.Logf("after expiry: %d handshakes, %d failed, %d failed CSRs", broken.Handshakes, broken.Failures, broken.IssuanceFailures)
	for pair, f := range broken.FailuresByPair {
		t.Logf("  %s: %d (%s)", pair, f.Count, f.LastReason)
		break
	}

	// Recover, watching the probe for the first successful handshake.
	start := time.Now()
	s.ResetProbe()
	firstOK := make(chan time.Duration, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		_ = wait.PollUntilContextCancel(watchCtx, 100*time.Millisecond, false, func(context.Context) (bool, error) {
			if snap := s.Probe(); snap.Handshakes > snap.Failures {
				firstOK <- time.Since(start)
				return true, nil
			}
			return false, nil
		})
	}()
	recs, err := rotate.New([]*rotate.Cluster{tg.cluster}, recoverOpts).Recover(ctx, rotate.RecoverOptions{})
	if err != nil {
		t.Fatalf("recover: %v\n%s", err, log.String())
	}
	t.Log(log.String())
	r := recs[0]
	t.Logf("recover: expired %v; written after %.1fs, istiod serving after %.1fs, fleet proven after %.1fs", r.Expired, r.Written, r.IstiodServing, r.Proven)
	if len(r.Expired) == 0 || !strings.Contains(strings.Join(r.Expired, " "), "intermediate") {
		t.Errorf("recover did not report the expired intermediate: %v", r.Expired)
	}
	select {
	case d := <-firstOK:
		t.Logf("first successful handshake %.1fs after recover started", d.Seconds())
	case <-time.After(time.Minute):
		t.Error("no successful handshake within a minute of the recovery")
	}
	stopWatch()
	tg.assertFinal(t, recoverOpts.Root)
	// After the recovery: no failure over a stretch of probe rounds.
	s.ResetProbe()
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, false, func(context.Context) (bool, error) {
		return s.Probe().Handshakes >= 300, nil
	}); err != nil {
		t.Fatalf("the probe made too few handshakes after the recovery: %d", s.Probe().Handshakes)
	}
	assertNoFailures(t, s, "after recover")
	if !tg.backup(t, r.BackupSecret).Equal(tg.original) {
		t.Errorf("backup %s is not the expired cacerts", r.BackupSecret)
	}
}
