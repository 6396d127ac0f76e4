package rotate_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/verify"
)

// selfSigned is istio-ca-secret as the sandbox's istiod created it.
func selfSigned(t testing.TB, s *sandbox.Sandbox) *corev1.Secret {
	t.Helper()
	sec, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), sandbox.SelfSignedSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

// assertSelfSignedUntouched checks that istio-ca-secret is the one istiod
// created (same resourceVersion and bytes) and, when backup is set, that the
// backup is a byte-for-byte copy of it.
func assertSelfSignedUntouched(t *testing.T, s *sandbox.Sandbox, before *corev1.Secret, backup string) {
	t.Helper()
	after := selfSigned(t, s)
	if after.ResourceVersion != before.ResourceVersion || !maps.EqualFunc(after.Data, before.Data, bytes.Equal) {
		t.Errorf("istio-ca-secret changed (resourceVersion %s → %s)", before.ResourceVersion, after.ResourceVersion)
	}
	if backup == "" {
		return
	}
	b, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(context.Background(), backup, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("backup of istio-ca-secret: %v", err)
	}
	if !maps.EqualFunc(b.Data, before.Data, bytes.Equal) {
		t.Errorf("backup %s is not a byte-for-byte copy of istio-ca-secret", backup)
	}
}

// assertServesFrom checks that istiod distributes the roots of rootPEM in
// every namespace.
func assertServesFrom(t *testing.T, s *sandbox.Sandbox, rootPEM []byte, what string) {
	t.Helper()
	cms, err := s.Client().CoreV1().ConfigMaps("").List(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + sandbox.RootCertConfig})
	if err != nil {
		t.Fatal(err)
	}
	if len(cms.Items) == 0 {
		t.Fatal("no istio-ca-root-cert ConfigMap")
	}
	for _, cm := range cms.Items {
		if cm.Data["root-cert.pem"] != string(rootPEM) {
			t.Errorf("istio-ca-root-cert in %s does not carry the bytes of %s: istiod does not serve from it", cm.Namespace, what)
		}
	}
}

func assertNoRefused(t *testing.T, s *sandbox.Sandbox, what string) {
	t.Helper()
	snap := s.Probe()
	t.Logf("%s: %d refused, %d long-lived connections, %d reset, %d failed CSRs", what, snap.Refused, snap.Connections, snap.Resets, snap.IssuanceFailures)
	if snap.Refused != 0 {
		t.Errorf("%s: %d refused connections, want 0", what, snap.Refused)
	}
}

// TestMigrationFromSelfSignedUnderProbeTraffic migrates a mesh on istiod's
// self-signed CA to a plug-in CA: first to the trust phase and back
// (rollback to self-signed), then all the way; the probe sees no failed
// handshake and no refused connection, istiod ends up serving from cacerts
// with the new root only, and istio-ca-secret is backed up and untouched.
func TestMigrationFromSelfSignedUnderProbeTraffic(t *testing.T) {
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2, Workloads: 2, CA: sandbox.CASelfSigned}))
	tg := connect(t, s, "sandbox")
	ctx := context.Background()
	before := selfSigned(t, s)
	selfRoot := before.Data["root-cert.pem"]
	if len(selfRoot) == 0 {
		selfRoot = before.Data["ca-cert.pem"]
	}
	t.Run("plan and status say it is a migration", func(t *testing.T) {
		var log bytes.Buffer
		plans, err := rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(t), bundle.PhaseRetire, &log)).Plan(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p := plans[0]; !p.Migration || !p.Start || len(p.Blockers) > 0 || !strings.Contains(p.Why, "self-signed") {
			t.Errorf("plan does not start a migration: %+v", p)
		}
		sts, err := rotate.New([]*rotate.Cluster{tg.cluster}, rotate.Options{}).Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(sts[0].CA, "self-signed") {
			t.Errorf("status says CA %q, want self-signed", sts[0].CA)
		}
	})
	t.Run("to trust and rolled back to self-signed", func(t *testing.T) {
		var log bytes.Buffer
		s.ResetProbe()
		if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(t), bundle.PhaseTrust, &log)).Run(ctx); err != nil {
			t.Fatalf("migrate until trust: %v\n%s", err, log.String())
		}
		trust := tg.cacerts(t)
		if !bytes.HasPrefix(trust.RootCert, selfRoot) || len(mustParse(t, trust).Roots) != 2 {
			t.Errorf("trust cacerts root-cert.pem is not the self-signed root's bytes followed by the new root")
		}
		if !bytes.Equal(trust.CAKey, before.Data["ca-key.pem"]) {
			t.Error("trust cacerts does not keep the self-signed CA signing")
		}
		assertServesFrom(t, s, trust.RootCert, "cacerts (trust)")
		if !strings.Contains(log.String(), rotate.ReasonSelfSignedSwitch) {
			t.Errorf("istiod was not restarted for the switch:\n%s", log.String())
		}
		if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(nil, "", &log)).Rollback(ctx); err != nil {
			t.Fatalf("rollback: %v\n%s", err, log.String())
		}
		if _, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(ctx, rotate.CACertsSecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("cacerts still exists after the rollback to self-signed (err %v)", err)
		}
		assertServesFrom(t, s, selfRoot, "istio-ca-secret")
		exp, _ := verify.NewExpectation("self-signed", []string{pki.Fingerprint(mustParse(t, trust).Roots[0])}, pki.Fingerprint(mustParse(t, trust).Signer))
		if rep, err := tg.cluster.Verifier.Verify(ctx, exp); err != nil || !rep.OK() {
			t.Errorf("the fleet is not back on the self-signed CA alone (%v)", err)
		}
		assertSelfSignedUntouched(t, s, before, readRecord(t, tg).BackupSecret)
		assertNoFailures(t, s, "migrate to trust and roll back to self-signed")
		assertNoRefused(t, s, "migrate to trust and roll back to self-signed")
		t.Log(log.String())
	})
	t.Run("all the way", func(t *testing.T) {
		var log bytes.Buffer
		root := newRoot(t)
		s.ResetProbe()
		if err := rotate.New([]*rotate.Cluster{tg.cluster}, options(root, bundle.PhaseRetire, &log)).Run(ctx); err != nil {
			t.Fatalf("migrate: %v\n%s", err, log.String())
		}
		tg.assertFinal(t, root)
		assertServesFrom(t, s, tg.cacerts(t).RootCert, "cacerts (new root only)")
		rec := readRecord(t, tg)
		if !rec.Migration() || !strings.HasPrefix(rec.BackupSecret, sandbox.SelfSignedSecret+"-backup-") {
			t.Errorf("record does not say a migration backed up istio-ca-secret: from %q, backup %q", rec.From, rec.BackupSecret)
		}
		assertSelfSignedUntouched(t, s, before, rec.BackupSecret)
		assertNoFailures(t, s, "migration from self-signed")
		assertNoRefused(t, s, "migration from self-signed")
		t.Log(log.String())
	})
}

// TestMigrationKilledInEachPhaseResumes kills `meshca rotate` with SIGKILL in
// each phase of a migration (before and after istiod's restart in trust) and
// re-runs it: no failed handshake, and the same end state.
func TestMigrationKilledInEachPhaseResumes(t *testing.T) {
	bin := buildMeshca(t)
	s := startSandbox(t, healthy(sandbox.Options{Nodes: 2, Workloads: 2, CA: sandbox.CASelfSigned}))
	tg := connect(t, s, "sandbox")
	before := selfSigned(t, s)
	root := newRoot(t)
	rootDir := writeRoot(t, root)
	s.ResetProbe()
	args := func() []string {
		return []string{"rotate", "--kubeconfig", s.Kubeconfig(), "--root", rootDir, "--key-type", "ecdsa-p256", "--yes", "--reload-timeout", "30s", "--verify-timeout", "1m", "-o", "json"}
	}
	points := killAndResume(t, bin, args, []killAt{
		{kind: rotate.EventBackup},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseTrust},
		{kind: rotate.EventRestartFinished, phase: rotate.PhaseTrust, workload: "deployment/"},
		{kind: rotate.EventIstiodReloaded, phase: rotate.PhaseTrust},
		{kind: rotate.EventPhaseProven, phase: rotate.PhaseTrust},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseIssue},
		{kind: rotate.EventVerifying, phase: rotate.PhaseIssue},
		{kind: rotate.EventPhaseWritten, phase: rotate.PhaseRetire},
	})
	var final bytes.Buffer
	cmd := exec.Command(bin, args()...)
	cmd.Stderr = &final
	if err := cmd.Run(); err != nil {
		t.Fatalf("final run: %v\n%s", err, final.String())
	}
	t.Logf("killed at %d points: %v", len(points), points)
	for _, p := range []rotate.Phase{rotate.PhaseTrust, rotate.PhaseIssue, rotate.PhaseRetire} {
		killed := false
		for k := range points {
			killed = killed || strings.Contains(k, " "+string(p))
		}
		if !killed {
			t.Errorf("no kill in phase %s", p)
		}
	}
	tg.assertFinal(t, root)
	assertSelfSignedUntouched(t, s, before, readRecord(t, tg).BackupSecret)
	assertNoFailures(t, s, "migration killed with SIGKILL and resumed")
	assertNoRefused(t, s, "migration killed with SIGKILL and resumed")
}

// resourceVersions of the CA objects a refused run must leave alone.
func resourceVersions(t *testing.T, s *sandbox.Sandbox) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for _, name := range []string{rotate.CACertsSecret, sandbox.SelfSignedSecret, rotate.NextSecret} {
		if sec, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Get(ctx, name, metav1.GetOptions{}); err == nil {
			out["secret/"+name] = sec.ResourceVersion
		}
	}
	if cm, err := s.Client().CoreV1().ConfigMaps(sandbox.IstioNamespace).Get(ctx, rotate.RecordName, metav1.GetOptions{}); err == nil {
		out["configmap/"+rotate.RecordName] = cm.ResourceVersion
	}
	if d, err := s.Client().AppsV1().Deployments(sandbox.IstioNamespace).Get(ctx, sandbox.IstiodName, metav1.GetOptions{}); err == nil {
		out["deployment/istiod generation"] = fmt.Sprint(d.Generation)
	}
	return out
}

// assertRefused checks that run is refused with an error saying each of
// want, and that it changed none of the CA objects (resourceVersions).
func assertRefused(t *testing.T, s *sandbox.Sandbox, run func() error, want ...string) {
	t.Helper()
	before := resourceVersions(t, s)
	err := run()
	if err == nil {
		t.Fatal("the run was not refused")
	}
	t.Logf("refusal: %v", err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal does not say %q: %v", w, err)
		}
	}
	if after := resourceVersions(t, s); !maps.Equal(before, after) {
		t.Errorf("a refused run changed objects: %v → %v", before, after)
	}
}

// TestMigrationRefusals: a self-signed istiod without ISTIO_MULTIROOT_MESH,
// and cacerts created next to istio-ca-secret without an istiod restart,
// are each refused with the fix named and nothing changed.
func TestMigrationRefusals(t *testing.T) {
	s := startSandbox(t, sandbox.Options{Nodes: 1, Workloads: 1, XDSAgent: true, CA: sandbox.CASelfSigned})
	tg := connect(t, s, "sandbox")
	ctx := context.Background()
	refused := func(t *testing.T, want ...string) {
		t.Helper()
		assertRefused(t, s, func() error {
			var log bytes.Buffer
			return rotate.New([]*rotate.Cluster{tg.cluster}, options(newRoot(t), bundle.PhaseRetire, &log)).Run(ctx)
		}, want...)
	}
	t.Run("self-signed istiod with ISTIO_MULTIROOT_MESH off", func(t *testing.T) {
		refused(t, "ISTIO_MULTIROOT_MESH", "--set")
	})
	t.Run("cacerts next to istio-ca-secret without an istiod restart", func(t *testing.T) {
		patch := []byte(`{"spec":{"template":{"spec":{"containers":[{"name":"discovery","env":[{"name":"ISTIO_MULTIROOT_MESH","value":"true"}]}]}}}}`)
		if _, err := s.Client().AppsV1().Deployments(sandbox.IstioNamespace).Patch(ctx, sandbox.IstiodName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitReady(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		root := newRoot(t)
		inter, err := pki.NewIntermediate(root, pki.IntermediateOptions{Cluster: "sandbox", KeyType: pki.ECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		b, err := bundle.FromCA(root, inter)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Client().CoreV1().Secrets(sandbox.IstioNamespace).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: rotate.CACertsSecret, Namespace: sandbox.IstioNamespace}, Data: b.SecretData(),
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		refused(t, "istiod serves from istio-ca-secret", "rollout restart deployment/istiod", "delete secret cacerts")
	})
}
