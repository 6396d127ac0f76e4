package rotate

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/preflight"
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
	// ClusterName names the cluster's intermediate (L=<name>) and its
	// directory under Options.RootDir; defaults to Name.
	ClusterName string
	// Client reaches the cluster's API server.
	Client kubernetes.Interface
	// Namespace is the Istio namespace (where istiod and cacerts live).
	Namespace string
	// Verifier proves what the fleet holds.
	Verifier Verifier
	// Istiods asks each istiod replica which chain it serves; nil skips
	// the per-replica gates.
	Istiods IstiodReader
	// CA, when set, is this cluster's own new signing bundle (--ca-dir);
	// otherwise meshca issues an intermediate under Options.Root.
	CA *bundle.Bundle
}

// Options configures a rotation.
type Options struct {
	// Root is the new root (with its key, kept on disk) under which meshca
	// issues each cluster's intermediate.
	Root *pki.CA
	// RootDir is the directory Root was read from. The intermediate meshca
	// issues for a cluster is kept in RootDir/<cluster>/ (the tools/certs
	// layout), so that `rotate --plan` and the run that follows write the
	// same one, and a run uses the intermediate found there when it chains
	// to Root. Empty: intermediates are issued in memory only.
	RootDir string
	// Until is the last phase to run (trust, issue or retire).
	Until bundle.Phase
	// Pace chooses between restarts and waiting (PaceFast by default).
	Pace Pace
	// OneStep runs the field note's single-step procedure instead of the
	// phases (only with the user's explicit acceptance of downtime).
	OneStep bool
	// Force retires the old root even though some proxy still holds a
	// certificate that chains to it.
	Force bool
	// BreakLock takes over the rotation lock of a run that still renews it
	// (--break-lock: for a run the operator knows is gone, e.g. a machine
	// that lost its network).
	BreakLock bool
	// KeyType and IntermediateDays shape the intermediates meshca issues.
	KeyType          pki.KeyType
	IntermediateDays int
	// ReloadTimeout bounds the wait for istiod to hot-reload a bundle before
	// meshca restarts it; RolloutTimeout each rollout; VerifyTimeout the
	// wait for the fleet to converge in each phase (zero: 5 minutes with
	// PaceFast, the workload certificate lifetime with PaceGentle).
	ReloadTimeout, RolloutTimeout, VerifyTimeout time.Duration
	// Observer receives every event of the run.
	Observer Observer
	// Now is the clock.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.Until == "" {
		o.Until = bundle.PhaseRetire
	}
	if o.Pace == "" {
		o.Pace = PaceFast
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
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Engine runs rotations.
type Engine struct {
	opts     Options
	clusters []*Cluster
	summary  Summary
	started  time.Time
	// active names the clusters whose rotation this run carries on.
	active map[string]bool
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
	return &Engine{opts: opts, clusters: clusters, started: opts.Now(), active: map[string]bool{}}
}

// Summary returns what the run did so far, built from its events.
func (e *Engine) Summary() Summary { return e.summary }

func (e *Engine) record(ev Event) { e.summary.Add(ev) }

// state is a cluster's rotation state as read at the start of a step.
type state struct {
	c      *Cluster
	s      store
	cur    *bundle.Bundle
	rv     string
	held   holding
	record *Record
	next   *bundle.Bundle
	phase  Phase
	// target is what this run rotates to; wanted its bundle when known
	// before a rotation starts (--ca-dir, or an intermediate kept in
	// RootDir/<cluster>/).
	target target
	wanted *bundle.Bundle
	// start is set when no rotation is in progress and cacerts differs from
	// the target: a run starts a new rotation; why says how it differs.
	start bool
	why   string
	// prev is the record of the finished (or rolled-back) rotation that a
	// new one replaces; nil when there was none.
	prev *Record
	// selfSigned is set when there is no cacerts and cur was read from
	// istiod's istio-ca-secret (a migration, or one rolled back).
	selfSigned bool
}

// load reads a cluster's rotation state. With create, a run that must start
// a new rotation begins it (backup, pending bundle, record, in an order that
// a crash at any point leaves re-runnable).
func (e *Engine) load(ctx context.Context, c *Cluster, create bool) (*state, error) {
	st := &state{c: c, s: store{client: c.Client, namespace: c.Namespace}}
	var err error
	if st.cur, st.rv, err = st.s.readCACerts(ctx); err != nil {
		if !errors.Is(err, errSelfSigned) {
			return nil, err
		}
		// A migration from istiod's self-signed CA: its old CA is
		// istio-ca-secret, as the bundle that keeps it signing.
		if st.cur, err = st.s.readSelfSigned(ctx); err != nil {
			return nil, err
		}
		st.selfSigned = true
	}
	if st.held, err = e.holdingOf(st.cur); err != nil {
		return nil, err
	}
	if st.record, err = st.s.readRecord(ctx); err != nil {
		return nil, err
	}
	if st.target, st.wanted, err = e.targetOf(c); err != nil {
		return nil, err
	}
	st.phase = PhaseNone
	if st.record != nil {
		st.phase, err = derive(st.held, st.record)
		switch {
		case err != nil && (st.record.RolledBack != nil || st.record.finished()):
			// cacerts was changed after a finished rotation: history.
			st.phase = PhaseComplete
		case err != nil:
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		case st.record.RolledBack != nil && st.phase == PhaseNone:
			st.phase = PhaseRolledBack
		}
	}
	if !inProgress(st.record, st.phase) || st.phase == PhaseRolledBack {
		st.start, st.why = needsRotation(st.held, st.target)
		if !st.start || !create {
			return st, nil
		}
		if st.record != nil {
			st.prev = st.record
			st.record = nil
		}
		if err := e.begin(ctx, st); err != nil {
			return nil, err
		}
		st.start = false
		if st.phase, err = derive(st.held, st.record); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
	} else if err := conflict(c, st.record, st.target); err != nil {
		return nil, err
	}
	if st.next, _, err = st.s.readNext(ctx); err != nil {
		return nil, err
	}
	if st.next == nil && st.held.Signer == st.record.NewSigner {
		// Deleted once the issue phase was proven: cacerts holds the key.
		if st.next, err = pendingFromCACerts(st.cur, st.record); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
	}
	return st, nil
}

// pending is the new CA bundle of the rotation in progress: Secret
// NextSecret, or cacerts itself once it signs with the new intermediate.
func (st *state) pending() (*bundle.Bundle, error) {
	if st.next == nil {
		return nil, fmt.Errorf("secret %s/%s with the new CA is missing although configmap %s records a rotation and cacerts does not sign with the new intermediate %.12s: it was deleted (or a rollback stepped back from the issue phase); restore it, or finish the rollback with meshca rollback",
			st.c.Namespace, NextSecret, RecordName, st.record.NewSigner)
	}
	return st.next, nil
}

// conflict refuses a run that names another CA than the rotation in
// progress.
func conflict(c *Cluster, r *Record, t target) error {
	if t.Root == "" || (t.Root == r.NewRoot && (t.Signer == "" || t.Signer == r.NewSigner)) {
		return nil
	}
	return fmt.Errorf("cluster %s: a rotation to root %.12s (intermediate %.12s) is in progress (configmap %s/%s); finish it with that CA or roll back (meshca rollback) before rotating to root %.12s",
		c.Name, r.NewRoot, r.NewSigner, c.Namespace, RecordName, t.Root)
}

// holdingOf reads the fingerprints of what cacerts holds.
func (e *Engine) holdingOf(b *bundle.Bundle) (holding, error) {
	p, err := b.Parse()
	if err != nil {
		return holding{}, err
	}
	signerRoot := ""
	if r, err := bundle.SignerRoot(b, e.opts.Now()); err == nil {
		signerRoot = pki.Fingerprint(r)
	}
	return holdingOf(b, p, signerRoot), nil
}

// targetOf is the CA this run rotates c to: the cluster's own bundle
// (--ca-dir), or Root with the intermediate kept in RootDir/<cluster>/ when
// there is one; empty when the run names no CA (status, rollback).
func (e *Engine) targetOf(c *Cluster) (target, *bundle.Bundle, error) {
	now := e.opts.Now()
	switch {
	case c.CA != nil:
		root, err := bundle.SignerRoot(c.CA, now)
		if err != nil {
			return target{}, nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		p, err := c.CA.Parse()
		if err != nil {
			return target{}, nil, err
		}
		return target{Root: pki.Fingerprint(root), Signer: pki.Fingerprint(p.Signer)}, c.CA, nil
	case e.opts.Root != nil:
		t := target{Root: pki.Fingerprint(e.opts.Root.Cert)}
		kept, err := e.keptIntermediate(c)
		if err != nil || kept == nil {
			return t, nil, err
		}
		p, err := kept.Parse()
		if err != nil {
			return t, nil, err
		}
		t.Signer = pki.Fingerprint(p.Signer)
		return t, kept, nil
	}
	return target{}, nil, nil
}

// intermediateDir is where the intermediate of c under RootDir is kept.
func (e *Engine) intermediateDir(c *Cluster) string {
	if e.opts.RootDir == "" {
		return ""
	}
	name := strings.NewReplacer("/", "_", string(os.PathSeparator), "_", ":", "_").Replace(c.ClusterName)
	if name == "" || name == "." || name == ".." {
		name = "cluster"
	}
	return filepath.Join(e.opts.RootDir, name)
}

// keptIntermediate loads RootDir/<cluster>/ when it holds a valid bundle
// under Root; nil when there is none.
func (e *Engine) keptIntermediate(c *Cluster) (*bundle.Bundle, error) {
	dir := e.intermediateDir(c)
	if dir == "" {
		return nil, nil
	}
	if _, err := os.Stat(filepath.Join(dir, bundle.CACertFile)); os.IsNotExist(err) {
		return nil, nil
	}
	b, err := bundle.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: intermediate kept in %s: %w (fix it, or remove the directory to have meshca issue a new one)", c.Name, dir, err)
	}
	if err := bundle.Validate(b, e.opts.Now()); err != nil {
		return nil, fmt.Errorf("cluster %s: intermediate kept in %s is not valid: %w (remove the directory to have meshca issue a new one)", c.Name, dir, err)
	}
	if !underRoot(b, e.opts.Root, e.opts.Now()) {
		return nil, fmt.Errorf("cluster %s: intermediate kept in %s does not chain to root %s: remove the directory to have meshca issue one under this root", c.Name, dir, pki.ShortFingerprint(e.opts.Root.Cert))
	}
	return b, nil
}

// nextBundle is the bundle a new rotation of st rotates to, and where it
// comes from. An intermediate meshca issues is kept in RootDir/<cluster>/
// (key 0600) when persist is set, so the plan shows what the run writes.
func (e *Engine) nextBundle(ctx context.Context, st *state, persist bool) (*bundle.Bundle, string, error) {
	if st.wanted != nil {
		if st.c.CA != nil {
			return st.wanted, "the given bundle (--ca-dir)", nil
		}
		return st.wanted, "the intermediate kept in " + e.intermediateDir(st.c), nil
	}
	if e.opts.Root == nil {
		return nil, "", fmt.Errorf("cluster %s: no rotation in progress; give the new root with --root DIR (or a bundle with --ca-dir DIR)", st.c.Name)
	}
	// A pending bundle under the same root left by a crashed start.
	if pending, _, _ := st.s.readNext(ctx); pending != nil && underRoot(pending, e.opts.Root, e.opts.Now()) {
		if h, err := e.holdingOf(pending); err == nil && h.Signer != st.held.Signer {
			return pending, fmt.Sprintf("the intermediate pending in secret %s/%s", st.c.Namespace, NextSecret), nil
		}
	}
	inter, err := pki.NewIntermediate(e.opts.Root, pki.IntermediateOptions{
		Cluster: st.c.ClusterName, KeyType: e.opts.KeyType, Days: e.opts.IntermediateDays,
		IstioNamespace: st.c.Namespace, Now: e.opts.Now(),
	})
	if err != nil {
		return nil, "", err
	}
	next, err := bundle.FromCA(e.opts.Root, inter)
	if err != nil {
		return nil, "", err
	}
	dir := e.intermediateDir(st.c)
	if !persist || dir == "" {
		return next, "a new intermediate issued under root " + pki.ShortFingerprint(e.opts.Root.Cert), nil
	}
	if err := next.Write(dir, false); err != nil {
		return nil, "", fmt.Errorf("cluster %s: keep the new intermediate in %s: %w", st.c.Name, dir, err)
	}
	st.wanted = next
	st.target.Signer = pki.Fingerprint(inter.Cert)
	return next, "a new intermediate issued under root " + pki.ShortFingerprint(e.opts.Root.Cert) + ", kept in " + dir, nil
}

// preflight runs `meshca check`'s checks on c.
func (e *Engine) preflight(ctx context.Context, c *Cluster) (*preflight.Report, error) {
	pre, err := preflight.Run(ctx, c.Client, preflight.Options{Namespace: c.Namespace, Now: e.opts.Now()})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: preflight: %w", c.Name, err)
	}
	return pre, nil
}

// begin starts a rotation: backup (verified), pending bundle, record. The
// preflight ran before (Run checks every cluster before any write).
func (e *Engine) begin(ctx context.Context, st *state) error {
	now := e.opts.Now()
	if err := bundle.Validate(st.cur, now); err != nil {
		return fmt.Errorf("cluster %s: the current cacerts is not valid, refusing to rotate from it: %w", st.c.Name, err)
	}
	if err := checkNewCA(st.c, e.opts.Root, now); err != nil {
		return err
	}
	// The record load read: begin runs under the rotation lock, so it has
	// not changed since.
	last := st.prev
	from, backup := CACertsSecret, st.s.backup
	if st.selfSigned {
		from, backup = mesh.SelfSignedSecret, func(ctx context.Context, _ *bundle.Bundle, last *Record, now time.Time) (string, string, error) {
			return st.s.backupSelfSigned(ctx, last, now)
		}
	}
	name, id, err := backup(ctx, st.cur, last, now)
	if err != nil {
		return err
	}
	e.emit(Event{Kind: EventBackup, Cluster: st.c.Name, Object: st.c.Namespace + "/" + name,
		Detail: fmt.Sprintf("backed up %s to secret %s/%s (verified byte for byte)", from, st.c.Namespace, name)})
	next, _, err := e.nextBundle(ctx, st, true)
	if err != nil {
		return err
	}
	if err := bundle.ValidateNew(next, now); err != nil {
		return fmt.Errorf("cluster %s: the new CA bundle is not valid, nothing was changed: %w", st.c.Name, err)
	}
	_, nextRV, err := st.s.readNext(ctx)
	if err != nil {
		return err
	}
	if err := st.s.writeNext(ctx, next, nextRV); err != nil {
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
		ID:        id,
		Strategy:  strategy,
		OldRoots:  uniqueFPs(oldP.Roots),
		OldSigner: pki.Fingerprint(oldP.Signer),
		NewRoot:   pki.Fingerprint(newRoot), NewSigner: pki.Fingerprint(newP.Signer),
		BackupSecret: name, Started: now.UTC(),
		From:            migrationFrom(st.selfSigned),
		resourceVersion: prevRV(st.prev),
	}
	if err := st.s.writeRecord(ctx, st.record); err != nil {
		return err
	}
	detail := fmt.Sprintf("rotation recorded in configmap %s/%s (new root %.12s, new signer %.12s)", st.c.Namespace, RecordName, st.record.NewRoot, st.record.NewSigner)
	if st.record.IntermediateOnly() {
		detail += "; intermediate only: the root stays, so only the issue phase runs"
	}
	e.emit(Event{Kind: EventRecorded, Cluster: st.c.Name, Object: st.c.Namespace + "/" + RecordName,
		NewRoot: st.record.NewRoot, NewSigner: st.record.NewSigner, Detail: detail})
	return nil
}

// prevRV is the resourceVersion of the record a new rotation replaces ("":
// none, the record is created).
func prevRV(r *Record) string {
	if r == nil {
		return ""
	}
	return r.resourceVersion
}

// underRoot reports whether b's signer chains to root at now.
func underRoot(b *bundle.Bundle, root *pki.CA, now time.Time) bool {
	roots, err := b.ParseRoots()
	if err != nil || root == nil || !pki.Contains(roots, root.Cert) {
		return false
	}
	r, err := bundle.SignerRoot(b, now)
	return err == nil && r.Equal(root.Cert)
}

func uniqueFPs(certs []*x509.Certificate) []string {
	u, _ := pki.Unique(certs)
	return pki.Fingerprints(u)
}

func shortFPs(fps []string) []string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = f[:min(12, len(f))]
	}
	return out
}

// NewCluster is a cluster reached through client, whose fleet is proven by
// reading every proxy through port-forwards (verify.Live).
func NewCluster(name string, client *kube.Client, namespace string) *Cluster {
	return &Cluster{Name: name, ClusterName: name, Client: client.Clientset, Namespace: namespace,
		Verifier: liveVerifier{client: client, namespace: namespace},
		Istiods:  liveIstiods{fetcher: kube.NewFetcher(client), client: client, namespace: namespace}}
}

type liveVerifier struct {
	client    *kube.Client
	namespace string
}

func (v liveVerifier) Verify(ctx context.Context, exp verify.Expectation) (*verify.Report, error) {
	return verify.Live(ctx, v.client, exp, verify.LiveOptions{Namespace: v.namespace})
}
