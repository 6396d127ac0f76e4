package rotate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/preflight"
	"github.com/meshca/meshca/internal/rollout"
	"github.com/meshca/meshca/internal/verify"
)

// Verifier proves what the fleet of one cluster holds.
type Verifier interface {
	Verify(ctx context.Context, exp verify.Expectation) (*verify.Report, error)
}

// Cluster is one cluster of the rotation.
type Cluster struct {
	// Name is the kubeconfig context, for messages and the record.
	Name string
	// ClusterName names the cluster's intermediate (L=<name>); defaults to Name.
	ClusterName string
	Client      kubernetes.Interface
	// Namespace is the Istio namespace (where istiod and cacerts live).
	Namespace string
	Verifier  Verifier
	// CA, when set, is this cluster's own new signing bundle (--ca-dir);
	// otherwise meshca issues an intermediate under Options.Root.
	CA *bundle.Bundle
}

// Options configures a rotation.
type Options struct {
	// Root is the new root (with its key, kept on disk) under which meshca
	// issues each cluster's intermediate.
	Root *pki.CA
	// Until is the last phase to run (trust, issue or retire).
	Until bundle.Phase
	// OneStep runs the field note's single-step procedure instead of the
	// phases (only with the user's explicit acceptance of downtime).
	OneStep bool
	// Force retires the old root even though some proxy still holds a
	// certificate that chains to it.
	Force bool
	// KeyType and IntermediateDays shape the intermediates meshca issues.
	KeyType          pki.KeyType
	IntermediateDays int
	// ReloadTimeout bounds the wait for istiod to hot-reload a bundle before
	// meshca restarts it; RolloutTimeout each rollout; VerifyTimeout the
	// wait for the fleet to converge after the restarts.
	ReloadTimeout, RolloutTimeout, VerifyTimeout time.Duration
	// Progress receives one line per step.
	Progress io.Writer
	Now      func() time.Time
}

func (o *Options) defaults() {
	if o.Until == "" {
		o.Until = bundle.PhaseRetire
	}
	if o.KeyType == "" {
		o.KeyType = pki.RSA4096
	}
	if o.ReloadTimeout == 0 {
		// kubelet refreshes secret volumes within its sync period (1 min by
		// default) plus its cache TTL.
		o.ReloadTimeout = 3 * time.Minute
	}
	if o.RolloutTimeout == 0 {
		o.RolloutTimeout = 10 * time.Minute
	}
	if o.VerifyTimeout == 0 {
		o.VerifyTimeout = 5 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Summary is what a run did, per cluster and phase.
type Summary struct {
	Steps []Step `json:"steps"`
}

// Step is one timed step of a run.
type Step struct {
	Cluster  string        `json:"cluster"`
	Phase    Phase         `json:"phase"`
	Action   string        `json:"action"`
	Duration time.Duration `json:"duration"`
	// Waiting is the part of Duration spent waiting for rollouts and for
	// istiod, rather than meshca's own work.
	Waiting time.Duration `json:"waiting"`
	Detail  string        `json:"detail,omitempty"`
}

// Engine runs rotations.
type Engine struct {
	opts     Options
	clusters []*Cluster
	summary  Summary
	started  time.Time
}

// New returns an engine for the clusters; with several clusters they share
// the new root and each gets its own intermediate.
func New(clusters []*Cluster, opts Options) *Engine {
	opts.defaults()
	for _, c := range clusters {
		if c.ClusterName == "" {
			c.ClusterName = c.Name
		}
	}
	return &Engine{opts: opts, clusters: clusters}
}

// Summary returns the steps run so far.
func (e *Engine) Summary() Summary { return e.summary }

func (e *Engine) logf(format string, args ...any) {
	elapsed := e.opts.Now().Sub(e.started).Round(100 * time.Millisecond)
	_, _ = fmt.Fprintf(e.opts.Progress, "[%6s] %s\n", elapsed, fmt.Sprintf(format, args...))
}

// state is a cluster's rotation state as read at the start of a step.
type state struct {
	c      *Cluster
	s      store
	cur    *bundle.Bundle
	rv     string
	record *Record
	next   *bundle.Bundle
	phase  Phase
	// prevRecordRV is the resourceVersion of a record that a new rotation
	// replaces.
	prevRecordRV string
}

// load reads (and on the first run creates) a cluster's rotation state:
// backup, pending bundle and record, in an order that a crash at any point
// leaves re-runnable.
func (e *Engine) load(ctx context.Context, c *Cluster, create bool) (*state, error) {
	st := &state{c: c, s: store{client: c.Client, namespace: c.Namespace}}
	var err error
	if st.cur, st.rv, err = st.s.readCACerts(ctx); err != nil {
		return nil, err
	}
	if st.record, err = st.s.readRecord(ctx); err != nil {
		return nil, err
	}
	wantRoot := e.newRoot(c)
	if st.record != nil && create && (st.record.RolledBack != nil ||
		e.isFinished(st) && wantRoot != "" && wantRoot != st.record.NewRoot) {
		// A new rotation after a rolled-back or finished one replaces the
		// record (its backup Secret stays).
		st.prevRecordRV = st.record.resourceVersion
		st.record = nil
	}
	if st.record == nil {
		if !create {
			return st, nil
		}
		if err := e.begin(ctx, st); err != nil {
			return nil, err
		}
	}
	if st.next, err = st.s.readNext(ctx); err != nil {
		return nil, err
	}
	if st.next == nil {
		return nil, fmt.Errorf("secret %s/%s with the new CA is missing although configmap %s records a rotation: it was deleted; restore it or roll back", c.Namespace, NextSecret, RecordName)
	}
	if wantRoot != "" && wantRoot != st.record.NewRoot {
		return nil, fmt.Errorf("cluster %s: a rotation to root %.12s is in progress (configmap %s/%s); finish it with that root or roll back (meshca rollback) before rotating to %.12s",
			c.Name, st.record.NewRoot, c.Namespace, RecordName, wantRoot)
	}
	if st.phase, err = derive(st.cur, st.record); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	return st, nil
}

// newRoot is the fingerprint of the root this run rotates to: --root, or
// the root of the cluster's own bundle (--ca-dir); "" when neither is given
// (status, rollback, or resuming without naming the root).
func (e *Engine) newRoot(c *Cluster) string {
	switch {
	case e.opts.Root != nil:
		return pki.Fingerprint(e.opts.Root.Cert)
	case c.CA != nil:
		if root, err := bundle.SignerRoot(c.CA, e.opts.Now()); err == nil {
			return pki.Fingerprint(root)
		}
	}
	return ""
}

func (e *Engine) isFinished(st *state) bool {
	p, err := derive(st.cur, st.record)
	return err == nil && p == PhaseComplete
}

// begin starts a rotation: backup (verified), pending bundle, record.
func (e *Engine) begin(ctx context.Context, st *state) error {
	if e.opts.Root == nil && st.c.CA == nil {
		return fmt.Errorf("cluster %s: no rotation in progress; give the new root with --root DIR (or a bundle with --ca-dir DIR)", st.c.Name)
	}
	now := e.opts.Now()
	// Preflight before the first write: a mesh that cannot take the phases
	// without failed handshakes is refused, with the fix for each finding.
	pre, err := preflight.Run(ctx, st.c.Client, preflight.Options{Namespace: st.c.Namespace, Now: now})
	if err != nil {
		return fmt.Errorf("cluster %s: preflight: %w", st.c.Name, err)
	}
	if err := pre.Err(); err != nil {
		return fmt.Errorf("cluster %s: not ready for a rotation, nothing was changed (meshca check shows the details): %w", st.c.Name, err)
	}
	e.logf("%s: preflight passed (meshca check)", st.c.Name)
	if err := bundle.Validate(st.cur, now); err != nil {
		return fmt.Errorf("cluster %s: the current cacerts is not valid, refusing to rotate from it: %w", st.c.Name, err)
	}
	if err := checkNewCA(st.c, e.opts.Root, now); err != nil {
		return err
	}
	name, err := st.s.backup(ctx, st.cur)
	if err != nil {
		return err
	}
	e.logf("%s: backed up cacerts to secret %s/%s (verified byte for byte)", st.c.Name, st.c.Namespace, name)
	next := st.c.CA
	if next == nil {
		// Reuse a pending bundle under the same root left by a crashed start.
		if pending, _ := st.s.readNext(ctx); pending != nil && underRoot(pending, e.opts.Root) {
			next = pending
		} else {
			inter, err := pki.NewIntermediate(e.opts.Root, pki.IntermediateOptions{
				Cluster: st.c.ClusterName, KeyType: e.opts.KeyType, Days: e.opts.IntermediateDays,
				IstioNamespace: st.c.Namespace, Now: now,
			})
			if err != nil {
				return err
			}
			if next, err = bundle.FromCA(e.opts.Root, inter); err != nil {
				return err
			}
		}
	}
	if err := bundle.ValidateNew(next, now); err != nil {
		return fmt.Errorf("cluster %s: the new CA bundle is not valid, nothing was changed: %w", st.c.Name, err)
	}
	if err := st.s.writeNext(ctx, next); err != nil {
		return err
	}
	oldP, err := st.cur.Parse()
	if err != nil {
		return err
	}
	newP, err := next.Parse()
	if err != nil {
		return err
	}
	newRoot, err := bundle.SignerRoot(next, now)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", st.c.Name, err)
	}
	strategy := "phased"
	if e.opts.OneStep {
		strategy = "one-step"
	}
	st.record = &Record{
		Strategy:  strategy,
		OldRoots:  uniqueFPs(oldP.Roots),
		OldSigner: pki.Fingerprint(oldP.Signer),
		NewRoot:   pki.Fingerprint(newRoot), NewSigner: pki.Fingerprint(newP.Signer),
		BackupSecret: name, Started: now.UTC(),
		resourceVersion: st.prevRecordRV,
	}
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	e.logf("%s: rotation recorded in configmap %s/%s (new root %.12s, new signer %.12s)", st.c.Name, st.c.Namespace, RecordName, st.record.NewRoot, st.record.NewSigner)
	return nil
}

func underRoot(b *bundle.Bundle, root *pki.CA) bool {
	roots, err := b.ParseRoots()
	return err == nil && root != nil && pki.Contains(roots, root.Cert)
}

func uniqueFPs(certs []*x509.Certificate) []string {
	u, _ := pki.Unique(certs)
	return pki.Fingerprints(u)
}

// expectation of the fleet once phase p is in place.
func expectation(r *Record, p Phase, rootPEM []byte) verify.Expectation {
	var roots []string
	signer := r.NewSigner
	switch p {
	case PhaseNone:
		roots, signer = r.OldRoots, r.OldSigner
	case PhaseTrust:
		roots, signer = append(slices.Clone(r.OldRoots), r.NewRoot), r.OldSigner
	case PhaseIssue:
		roots = append(slices.Clone(r.OldRoots), r.NewRoot)
	default:
		roots = []string{r.NewRoot}
	}
	slices.Sort(roots)
	exp := verify.Expectation{Source: "rotation phase " + string(p), Roots: slices.Compact(roots), Signer: signer}
	if rootPEM != nil {
		sum := sha256.Sum256(rootPEM)
		exp.RootCertSHA256 = hex.EncodeToString(sum[:])
	}
	return exp
}

// Run rotates every cluster up to opts.Until: each phase completes and is
// proven in EVERY cluster before the next phase starts in ANY (istio-ca-
// facts.md §5, multi-cluster).
func (e *Engine) Run(ctx context.Context) error {
	e.started = e.opts.Now()
	ctx, unlock, err := e.lockClusters(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	states := make([]*state, len(e.clusters))
	for i, c := range e.clusters {
		st, err := e.load(ctx, c, true)
		if err != nil {
			return err
		}
		states[i] = st
		e.logf("%s: cacerts is in phase %s", c.Name, st.phase)
	}
	if e.opts.OneStep {
		for _, st := range states {
			if err := e.oneStep(ctx, st); err != nil {
				return err
			}
		}
		return nil
	}
	for _, phase := range []Phase{PhaseTrust, PhaseIssue, PhaseRetire} {
		for i, c := range e.clusters {
			st, err := e.load(ctx, c, false)
			if err != nil {
				return err
			}
			states[i] = st
			if err := e.runPhase(ctx, st, phase); err != nil {
				return fmt.Errorf("cluster %s, phase %s: %w", c.Name, phase, err)
			}
		}
		if string(phase) == string(e.opts.Until) {
			if phase != PhaseRetire {
				e.logf("stopping after phase %s as asked (--until %s)", phase, phase)
			}
			break
		}
	}
	return nil
}

// runPhase brings one cluster to phase p and proves it on the fleet. A phase
// already proven is only re-verified; one written but not proven continues
// where it stands.
func (e *Engine) runPhase(ctx context.Context, st *state, p Phase) error {
	name := st.c.Name
	if st.phase.index() > p.index() {
		return nil // this cluster is past p already
	}
	if st.record.proven(p) && st.phase == p {
		e.logf("%s: phase %s already proven", name, p)
		return nil
	}
	if st.phase == PhaseComplete {
		return nil
	}
	t0 := e.opts.Now()
	step := fmt.Sprintf("%s: phase %s:", name, p)
	var waited time.Duration
	if p == PhaseRetire && st.phase != PhaseRetire && !e.opts.Force {
		// The guard of Linkerd#4287: no proxy may still hold a certificate
		// that chains to the old root. (Once the retire bundle is written,
		// e.g. by a run that was killed, only its proof remains to do.)
		rep, err := st.c.Verifier.Verify(ctx, expectation(st.record, PhaseIssue, nil))
		if err != nil {
			return err
		}
		if !rep.OK() {
			return fmt.Errorf("refusing to retire the old root: %s still hold certificates from the old CA or lack the new root; wait for them (or restart them) and run again, or pass --force to retire anyway (their mTLS will break)", lagging(rep))
		}
	}
	want, err := bundle.Build(bundle.Phase(p), st.cur, st.next, e.opts.Now())
	if err != nil {
		return err
	}
	if !want.Equal(st.cur) {
		reload, err := bundle.Transition(st.cur, want, true)
		if err != nil {
			return err
		}
		if st.rv, err = st.s.writeCACerts(ctx, want, st.rv); err != nil {
			return err
		}
		st.record.mark(p, false, e.opts.Now())
		if err := st.s.writeRecord(ctx, st.record); err != nil {
			return err
		}
		e.logf("%s wrote cacerts (%s)", step, describeWrite(st.cur, want, reload))
	}
	// istiod takes the bundle: hot reload, seen in the ConfigMaps it
	// rewrites; restart it when it does not.
	w0 := e.opts.Now()
	if err := e.waitIstiod(ctx, st, want, step); err != nil {
		return err
	}
	waited += e.opts.Now().Sub(w0)
	// Prove, restarting what cannot pick the change up by itself.
	w, err := e.converge(ctx, st, p, want.RootCert, false, step)
	waited += w
	if err != nil {
		return err
	}
	if err := e.proven(ctx, st, p, "phase "+string(p), t0, waited); err != nil {
		return err
	}
	e.logf("%s ✓ proven on the whole fleet (%s)", step, e.opts.Now().Sub(t0).Round(100*time.Millisecond))
	return nil
}

// proven records that phase p is proven on the fleet and adds the step to
// the summary.
func (e *Engine) proven(ctx context.Context, st *state, p Phase, action string, t0 time.Time, waited time.Duration) error {
	st.record.mark(p, true, e.opts.Now())
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	e.summary.Steps = append(e.summary.Steps, Step{Cluster: st.c.Name, Phase: p, Action: action, Duration: e.opts.Now().Sub(t0), Waiting: waited})
	return nil
}

// waitIstiod waits until istiod has loaded want, restarting it if it does not
// within ReloadTimeout.
func (e *Engine) waitIstiod(ctx context.Context, st *state, want *bundle.Bundle, step string) error {
	e.logf("%s waiting for istiod to load the bundle (istio-ca-root-cert in every namespace)", step)
	err := e.waitRootConfigMaps(ctx, st, want.RootCert, e.opts.ReloadTimeout)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	e.logf("%s istiod did not hot-reload (%v); restarting it", step, err)
	if err := e.restartIstiod(ctx, st, step); err != nil {
		return err
	}
	return e.waitRootConfigMaps(ctx, st, want.RootCert, e.opts.ReloadTimeout)
}

func (e *Engine) waitRootConfigMaps(ctx context.Context, st *state, want []byte, timeout time.Duration) error {
	var lag string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		cms, err := mesh.ReadRootConfigMaps(ctx, st.c.Client)
		if err != nil {
			lag = err.Error()
			return false, nil
		}
		if len(cms) == 0 {
			lag = "no istio-ca-root-cert ConfigMap"
			return false, nil
		}
		for _, cm := range cms {
			if !bytes.Equal([]byte(cm.Data), want) {
				lag = "namespace " + cm.Namespace + " still has the previous bytes"
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("istio-ca-root-cert not updated after %s: %s", timeout, lag)
	}
	return nil
}

// converge verifies the fleet for phase p; when it lags it restarts ztunnel
// (1.28 takes new roots only at restart or refresh), then the envoy
// workloads whose PCDS is not live, and waits for the proof.
func (e *Engine) converge(ctx context.Context, st *state, p Phase, rootPEM []byte, restartAll bool, step string) (time.Duration, error) {
	exp := expectation(st.record, p, rootPEM)
	e.logf("%s verifying the fleet against phase %s", step, p)
	rep, err := st.c.Verifier.Verify(ctx, exp)
	if err != nil {
		return 0, err
	}
	if rep.OK() && !restartAll {
		return 0, nil
	}
	if !rep.OK() {
		e.logf("%s %d of %d proxies lag; restarting what cannot pick the change up by itself", step, rep.Total.Failing(), rep.Total.Total)
	}
	var waited time.Duration
	w0 := e.opts.Now()
	if err := e.restartZtunnel(ctx, st, step); err != nil {
		return 0, err
	}
	waited += e.opts.Now().Sub(w0)
	envoys, err := e.envoysToRestart(ctx, st, restartAll)
	if err != nil {
		return waited, err
	}
	if len(envoys) > 0 {
		w0 = e.opts.Now()
		if err := e.restart(ctx, st, step, envoys...); err != nil {
			return waited, err
		}
		waited += e.opts.Now().Sub(w0)
	}
	e.logf("%s waiting for the fleet to converge on phase %s", step, p)
	w0 = e.opts.Now()
	var last *verify.Report
	err = wait.PollUntilContextTimeout(ctx, time.Second, e.opts.VerifyTimeout, true, func(ctx context.Context) (bool, error) {
		rep, err := st.c.Verifier.Verify(ctx, exp)
		if err != nil {
			return false, err
		}
		last = rep
		return rep.OK(), nil
	})
	waited += e.opts.Now().Sub(w0)
	if err != nil {
		if last != nil {
			return waited, fmt.Errorf("the fleet did not converge within %s: %s", e.opts.VerifyTimeout, lagging(last))
		}
		return waited, err
	}
	return waited, nil
}

// envoysToRestart lists the owners of envoy proxies that will not pick new
// roots up by themselves (PCDS not live), waypoints first, then gateways,
// then sidecar workloads; all of them with restartAll.
func (e *Engine) envoysToRestart(ctx context.Context, st *state, all bool) ([]rollout.Ref, error) {
	in, err := mesh.Discover(ctx, st.c.Client, mesh.Options{Namespace: st.c.Namespace})
	if err != nil {
		return nil, err
	}
	multiRoot := len(in.Istiods) > 0
	for _, d := range in.Istiods {
		multiRoot = multiRoot && d.MultiRoot
	}
	var refs []rollout.Ref
	seen := map[string]bool{}
	for _, kind := range []mesh.Kind{mesh.KindWaypoint, mesh.KindGateway, mesh.KindSidecar} {
		for _, p := range in.Proxies {
			if p.Kind != kind || (!all && p.XDSAgent && multiRoot) || p.Owner.Name == "" {
				continue
			}
			ref := rollout.Ref{Kind: p.Owner.Kind, Namespace: p.Namespace, Name: p.Owner.Name}
			if !seen[ref.String()] {
				seen[ref.String()] = true
				refs = append(refs, ref)
			}
		}
	}
	return refs, nil
}

func (e *Engine) restart(ctx context.Context, st *state, step string, refs ...rollout.Ref) error {
	for _, ref := range refs {
		t0 := e.opts.Now()
		e.logf("%s restarting %s", step, ref)
		if err := rollout.RestartAndWait(ctx, st.c.Client, []rollout.Ref{ref}, rollout.Options{Timeout: e.opts.RolloutTimeout, Now: e.opts.Now}); err != nil {
			return err
		}
		e.logf("%s %s rolled out (%s)", step, ref, e.opts.Now().Sub(t0).Round(100*time.Millisecond))
	}
	return nil
}

// restartIstiod restarts every istiod Deployment of the Istio namespace.
func (e *Engine) restartIstiod(ctx context.Context, st *state, step string) error {
	ds, err := mesh.FindIstiods(ctx, st.c.Client, st.c.Namespace)
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		return fmt.Errorf("no istiod Deployment (label app=istiod) in namespace %s to restart", st.c.Namespace)
	}
	var refs []rollout.Ref
	for _, d := range ds {
		refs = append(refs, rollout.Ref{Kind: rollout.KindDeployment, Namespace: d.Namespace, Name: d.Name})
	}
	return e.restart(ctx, st, step, refs...)
}

// restartZtunnel restarts every ztunnel DaemonSet (none in a sidecar-only
// mesh).
func (e *Engine) restartZtunnel(ctx context.Context, st *state, step string) error {
	ds, err := mesh.FindZtunnels(ctx, st.c.Client)
	if err != nil {
		return err
	}
	var refs []rollout.Ref
	for _, d := range ds {
		refs = append(refs, rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: d.Namespace, Name: d.Name})
	}
	return e.restart(ctx, st, step, refs...)
}

// lagging names the proxies that fail a report, with their first problem.
func lagging(rep *verify.Report) string {
	var parts []string
	for _, r := range rep.Failing() {
		s := fmt.Sprintf("%s %s/%s", r.Kind, r.Namespace, r.Name)
		if len(r.Problems) > 0 {
			s += " (" + r.Problems[0] + ")"
		} else if r.Reason != "" {
			s += " (" + string(r.Status) + ": " + r.Reason + ")"
		}
		parts = append(parts, s)
	}
	if rep.RootConfigMaps != nil {
		for _, cm := range rep.RootConfigMaps.Stale {
			parts = append(parts, "configmap "+cm.Namespace+"/istio-ca-root-cert")
		}
	}
	if len(parts) == 0 {
		return "no proxy named"
	}
	if len(parts) > 10 {
		parts = append(parts[:10], fmt.Sprintf("and %d more", len(parts)-10))
	}
	return strings.Join(parts, ", ")
}

// oneStep is the field note's procedure: the new signer and the old root
// appended in one write, then istiod, ztunnel and every envoy restarted. It
// leaves a window in which peers reject each other (istio-ca-facts.md §5).
func (e *Engine) oneStep(ctx context.Context, st *state) error {
	t0 := e.opts.Now()
	name := st.c.Name
	if st.phase != PhaseNone {
		return fmt.Errorf("cluster %s is in phase %s of a phased rotation: the one-step strategy applies only to a fresh rotation", name, st.phase)
	}
	want := st.next.Clone()
	want.RootCert = appendBytes(st.next.RootCert, st.cur.RootCert)
	want.Source = "one-step bundle"
	if err := bundle.Validate(want, e.opts.Now()); err != nil {
		return err
	}
	var err error
	if st.rv, err = st.s.writeCACerts(ctx, want, st.rv); err != nil {
		return err
	}
	st.record.mark(PhaseIssue, false, e.opts.Now())
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	step := name + ": one-step:"
	e.logf("%s wrote the new signer and the old root appended in one write", step)
	if err := e.restartIstiod(ctx, st, step); err != nil {
		return err
	}
	if err := e.waitRootConfigMaps(ctx, st, want.RootCert, e.opts.ReloadTimeout); err != nil {
		return err
	}
	waited, err := e.converge(ctx, st, PhaseIssue, want.RootCert, true, step)
	if err != nil {
		return err
	}
	if err := e.proven(ctx, st, PhaseIssue, "one-step", t0, waited); err != nil {
		return err
	}
	e.logf("%s: one-step rotation done; the old root is still trusted — run meshca rotate again to retire it", name)
	return nil
}

func appendBytes(a, b []byte) []byte {
	out := bytes.Clone(a)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return append(out, b...)
}

// describeWrite says what a cacerts write changes, by fingerprint.
func describeWrite(from, to *bundle.Bundle, reload bundle.Reload) string {
	fp, _ := from.Parse()
	tp, _ := to.Parse()
	var parts []string
	if fp != nil && tp != nil {
		if !fp.Signer.Equal(tp.Signer) {
			parts = append(parts, fmt.Sprintf("signer %.12s → %.12s", pki.Fingerprint(fp.Signer), pki.Fingerprint(tp.Signer)))
		}
		fu, _ := pki.Unique(fp.Roots)
		tu, _ := pki.Unique(tp.Roots)
		for _, r := range tu {
			if !pki.Contains(fu, r) {
				parts = append(parts, fmt.Sprintf("+root %.12s", pki.Fingerprint(r)))
			}
		}
		for _, r := range fu {
			if !pki.Contains(tu, r) {
				parts = append(parts, fmt.Sprintf("-root %.12s", pki.Fingerprint(r)))
			}
		}
		parts = append(parts, fmt.Sprintf("root-cert.pem %d → %d blocks", len(fp.Roots), len(tp.Roots)))
	}
	parts = append(parts, "istiod reload: "+string(reload))
	return strings.Join(parts, ", ")
}

// NewCluster is a cluster reached through client, whose fleet is proven by
// reading every proxy through port-forwards (verify.Live).
func NewCluster(name string, client *kube.Client, namespace string) *Cluster {
	return &Cluster{Name: name, ClusterName: name, Client: client.Clientset, Namespace: namespace, Verifier: liveVerifier{client: client, namespace: namespace}}
}

type liveVerifier struct {
	client    *kube.Client
	namespace string
}

func (v liveVerifier) Verify(ctx context.Context, exp verify.Expectation) (*verify.Report, error) {
	return verify.Live(ctx, v.client, exp, verify.LiveOptions{Namespace: v.namespace})
}
