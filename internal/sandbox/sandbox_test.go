package sandbox_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

// startSandbox starts a sandbox with a fast probe.
func startSandbox(t *testing.T, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Workloads == 0 {
		opts.Workloads = 6
	}
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = 20 * time.Millisecond
	}
	return sandboxtest.Start(t, opts)
}

// rotationKit holds the current and new CA of a rotation done by hand.
type rotationKit struct {
	s       *sandbox.Sandbox
	current *bundle.Bundle
	next    *bundle.Bundle
	oldRoot string
	newRoot string
	signer  string // the new intermediate
}

func newRotationKit(t *testing.T, s *sandbox.Sandbox) *rotationKit {
	t.Helper()
	cur, err := bundle.Load(filepath.Join(s.CADir(), "sandbox"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := pki.NewRoot(pki.RootOptions{KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "sandbox", KeyType: pki.ECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	next, err := bundle.FromCA(root, inter)
	if err != nil {
		t.Fatal(err)
	}
	oldRoots, err := cur.ParseRoots()
	if err != nil {
		t.Fatal(err)
	}
	return &rotationKit{s: s, current: cur, next: next, oldRoot: pki.Fingerprint(oldRoots[0]), newRoot: pki.Fingerprint(root.Cert), signer: pki.Fingerprint(inter.Cert)}
}

// writeCACerts replaces the cacerts Secret data with a raw API write.
func (k *rotationKit) writeCACerts(t *testing.T, ctx context.Context, b *bundle.Bundle) {
	t.Helper()
	secrets := k.s.Client().CoreV1().Secrets(sandbox.IstioNamespace)
	sec, err := secrets.Get(ctx, sandbox.CACertsSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data = b.SecretData()
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitRootConfigMaps waits until istiod has written want into every
// namespace's istio-ca-root-cert (proof that it hot-reloaded the bundle).
func (k *rotationKit) waitRootConfigMaps(t *testing.T, ctx context.Context, want []byte) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		cms, err := k.s.Client().CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + sandbox.RootCertConfig})
		if err != nil || len(cms.Items) == 0 {
			return false, nil
		}
		for _, cm := range cms.Items {
			if !bytes.Equal([]byte(cm.Data["root-cert.pem"]), want) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("istio-ca-root-cert ConfigMaps never carried the new bundle: %v", err)
	}
}

// restart restarts workloads in order and waits for each rollout.
func (k *rotationKit) restart(t *testing.T, ctx context.Context, refs ...rollout.Ref) {
	t.Helper()
	if err := rollout.RestartAndWait(ctx, k.s.Client(), refs, rollout.Options{Timeout: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
}

var (
	istiodRef  = rollout.Ref{Kind: rollout.KindDeployment, Namespace: sandbox.IstioNamespace, Name: sandbox.IstiodName}
	ztunnelRef = rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: sandbox.IstioNamespace, Name: sandbox.ZtunnelName}
)

func envoyRefs(s *sandbox.Sandbox) []rollout.Ref {
	refs := []rollout.Ref{}
	for _, ns := range s.AppNamespaces() {
		refs = append(refs, rollout.Ref{Kind: rollout.KindDeployment, Namespace: ns, Name: sandbox.WaypointName})
	}
	return append(refs, rollout.Ref{Kind: rollout.KindDeployment, Namespace: sandbox.IstioNamespace, Name: sandbox.GatewayName})
}

// waitHeld waits until every identity of every proxy satisfies ok, and
// reports the first one that does not on timeout.
func (k *rotationKit) waitHeld(t *testing.T, ctx context.Context, what string, ok func(sandbox.HeldCert) bool) {
	t.Helper()
	var lagging string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		held := k.s.Held()
		if len(held) == 0 {
			return false, nil
		}
		for _, h := range held {
			if !ok(h) {
				lagging = fmt.Sprintf("%s %s: roots %v signer %.12s %s", h.Proxy, h.Identity, short(h.Roots), h.Signer, h.Err)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("fleet never reached %q; lagging: %s", what, lagging)
	}
}

func short(fps []string) []string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = f[:12]
	}
	return out
}

func rootSet(h sandbox.HeldCert) []string {
	set := slices.Clone(h.Roots)
	slices.Sort(set)
	return slices.Compact(set)
}

func sameSet(got []string, want ...string) bool {
	slices.Sort(want)
	return slices.Equal(got, want)
}

// TestOneStepProcedureFailsHandshakes reproduces the field note's procedure
// (new signer and old root appended in one write; restart istiod, ztunnel,
// then the envoys) under probe traffic: peers that do not trust the new root
// yet reject the new certificates.
func TestOneStepProcedureFailsHandshakes(t *testing.T) {
	s := startSandbox(t, sandbox.Options{MultiRoot: true, XDSAgent: true})
	ctx := context.Background()
	k := newRotationKit(t, s)
	s.ResetProbe()

	oneStep := k.next.Clone()
	oneStep.RootCert = append(bytes.Clone(k.next.RootCert), k.current.RootCert...) // new root, then the old one appended
	k.writeCACerts(t, ctx, oneStep)
	k.restart(t, ctx, istiodRef)
	k.waitRootConfigMaps(t, ctx, oneStep.RootCert)
	k.restart(t, ctx, ztunnelRef)
	k.restart(t, ctx, envoyRefs(s)...)
	k.waitHeld(t, ctx, "new signer everywhere", func(h sandbox.HeldCert) bool {
		return h.Err == "" && h.Signer == k.signer && sameSet(rootSet(h), k.oldRoot, k.newRoot)
	})
	time.Sleep(200 * time.Millisecond) // a few more probe rounds on the converged fleet
	snap := s.Probe()
	t.Logf("one-step procedure: %d handshakes, %d failed", snap.Handshakes, snap.Failures)
	for pair, f := range snap.FailuresByPair {
		t.Logf("  %s: %d (%s)", pair, f.Count, f.LastReason)
	}
	if snap.Failures == 0 {
		t.Errorf("the one-step procedure recorded no failed handshakes out of %d; the probe should have seen peers reject the new root", snap.Handshakes)
	}
}

// TestPhasedRotationHasZeroFailures runs the three phases of
// istio-ca-facts.md §5 with raw API writes under probe traffic.
func TestPhasedRotationHasZeroFailures(t *testing.T) {
	s := startSandbox(t, sandbox.Options{MultiRoot: true, XDSAgent: true})
	ctx := context.Background()
	k := newRotationKit(t, s)
	s.ResetProbe()
	now := time.Now()

	trust, err := bundle.Build(bundle.PhaseTrust, k.current, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	k.writeCACerts(t, ctx, trust)
	k.waitRootConfigMaps(t, ctx, trust.RootCert) // hot reload, no istiod restart
	k.restart(t, ctx, ztunnelRef)
	k.waitHeld(t, ctx, "both roots trusted", func(h sandbox.HeldCert) bool {
		return h.Err == "" && sameSet(rootSet(h), k.oldRoot, k.newRoot)
	})

	issue, err := bundle.Build(bundle.PhaseIssue, trust, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	k.writeCACerts(t, ctx, issue)
	k.waitRootConfigMaps(t, ctx, issue.RootCert)
	k.restart(t, ctx, ztunnelRef)
	k.waitHeld(t, ctx, "every leaf from the new intermediate", func(h sandbox.HeldCert) bool {
		return h.Err == "" && h.Signer == k.signer && sameSet(rootSet(h), k.oldRoot, k.newRoot)
	})

	retire, err := bundle.Build(bundle.PhaseRetire, issue, k.next, now)
	if err != nil {
		t.Fatal(err)
	}
	k.writeCACerts(t, ctx, retire)
	k.waitRootConfigMaps(t, ctx, retire.RootCert)
	k.restart(t, ctx, ztunnelRef)
	k.waitHeld(t, ctx, "only the new root", func(h sandbox.HeldCert) bool {
		return h.Err == "" && h.Signer == k.signer && sameSet(rootSet(h), k.newRoot)
	})
	time.Sleep(200 * time.Millisecond)
	snap := s.Probe()
	t.Logf("phased rotation: %d handshakes, %d failed", snap.Handshakes, snap.Failures)
	for pair, f := range snap.FailuresByPair {
		t.Logf("  %s: %d (%s)", pair, f.Count, f.LastReason)
	}
	if snap.Handshakes < 100 {
		t.Errorf("only %d handshakes: the probe did not run through the rotation", snap.Handshakes)
	}
	if snap.Failures != 0 {
		t.Errorf("phased rotation: %d of %d handshakes failed, want 0", snap.Failures, snap.Handshakes)
	}
}

// TestRootChangeIgnoredWithoutMultiRoot: with ISTIO_MULTIROOT_MESH=false the
// real istiod refuses a changed root-cert.pem and the ConfigMaps keep the old
// bytes.
func TestRootChangeIgnoredWithoutMultiRoot(t *testing.T) {
	s := startSandbox(t, sandbox.Options{MultiRoot: false, XDSAgent: true, Nodes: 1, Workloads: 1})
	ctx := context.Background()
	k := newRotationKit(t, s)
	trust, err := bundle.Build(bundle.PhaseTrust, k.current, k.next, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k.writeCACerts(t, ctx, trust)
	const logLine = "Multi root is disabled, updating new ROOT-CA not supported"
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return s.IstiodLogContains(logLine), nil
	}); err != nil {
		t.Fatalf("istiod never logged %q", logLine)
	}
	time.Sleep(time.Second) // give a wrong reload the chance to show
	cms, err := s.Client().CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + sandbox.RootCertConfig})
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range cms.Items {
		if got := []byte(cm.Data["root-cert.pem"]); !bytes.Equal(got, k.current.RootCert) {
			t.Errorf("configmap %s/%s changed although istiod should have ignored the root change", cm.Namespace, cm.Name)
		}
	}
}

func TestMain(m *testing.M) {
	// The simulated proxies log every certificate at Info; keep test
	// output to what matters.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}
