package rollout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/kubectl/pkg/polymorphichelpers"

	"github.com/meshca/meshca/internal/kube"
)

// TimeoutError is returned by Wait when Options.Timeout expires before the
// rollout completes. It matches context.DeadlineExceeded with errors.Is.
type TimeoutError struct {
	// Ref is the workload whose rollout did not complete.
	Ref Ref
	// Timeout is the Options.Timeout that expired.
	Timeout time.Duration
	// Status is the last rollout-status message: what is still pending.
	Status string
}

// Error names the workload, the timeout and what is still pending.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("wait for rollout of %s: not complete after %v: %s", e.Ref, e.Timeout, e.Status)
}

// Is reports whether target is context.DeadlineExceeded.
func (e *TimeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded //nolint:errorlint // Is compares the target itself.
}

// errTimeout is the cause of the context Wait derives for Options.Timeout,
// telling that timeout apart from the caller's own deadline.
var errTimeout = errors.New("rollout wait timeout")

// kindLabels spell the kinds as kubectl's status messages do.
var kindLabels = map[string]string{KindDeployment: "deployment", KindDaemonSet: "daemon set", KindStatefulSet: "statefulset"}

// noStatus stands for the last status before any was received.
const noStatus = "no rollout status received yet"

// Wait waits until the rollout of ref is complete, as `kubectl rollout
// status` does: it watches the object (list, then watch, re-listing when the
// watch expires) and evaluates kubectl's StatusViewer for the kind on every
// change, passing each new status message to opts.Progress. On top of
// kubectl's logic it requires the status to describe at least the generation
// the object had when Wait started (read with a GET), with observedGeneration
// ≥ generation, so a Wait right after Restart never passes on stale status or
// a stale watch cache. It fails if the object is deleted or replaced, if the
// status viewer reports an error (e.g. a Deployment's progress deadline was
// exceeded, or a DaemonSet uses OnDelete), and when opts.Timeout or ctx
// expires; every error names ref, and a timeout is a *TimeoutError with the
// last status message. Meanwhile the API server is health-checked
// (kube.MonitorAPI): when it is lost, Wait returns within seconds with a
// *kube.APIUnreachableError naming it, not a rollout timeout minutes later.
func Wait(ctx context.Context, client kubernetes.Interface, ref Ref, opts Options) error {
	kind, err := ref.kind()
	if err != nil {
		return err
	}
	if opts.HealthInterval >= 0 {
		var stop context.CancelFunc
		ctx, stop = kube.MonitorAPI(ctx, client, kube.HealthOptions{Interval: opts.HealthInterval})
		defer stop()
	}
	start, err := get(ctx, client, ref, kind)
	if err != nil {
		return fmt.Errorf("wait for rollout of %s: %w", ref, kube.UnreachableCause(ctx, err))
	}
	minGeneration, uid := start.GetGeneration(), start.GetUID()

	wctx, cancel := ctx, context.CancelFunc(func() {})
	if opts.Timeout > 0 {
		wctx, cancel = context.WithTimeoutCause(ctx, opts.Timeout, errTimeout)
	}
	defer cancel()

	viewer, lw, objType := watchFor(client, ref, kind)
	last := noStatus
	_, err = watchtools.UntilWithSync(wctx, lw, objType, nil, func(e watch.Event) (bool, error) {
		switch e.Type {
		case watch.Added, watch.Modified:
		case watch.Deleted:
			return false, errors.New("deleted while waiting for its rollout")
		default:
			return false, fmt.Errorf("unexpected watch event %s", e.Type)
		}
		obj, ok := e.Object.(metav1.Object)
		if !ok {
			return false, fmt.Errorf("unexpected object %T in watch", e.Object)
		}
		if obj.GetUID() != uid {
			return false, fmt.Errorf("replaced while waiting for its rollout (uid %s, was %s)", obj.GetUID(), uid)
		}
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(e.Object)
		if err != nil {
			return false, fmt.Errorf("convert %T: %w", e.Object, err)
		}
		msg, done, err := viewer.Status(&unstructured.Unstructured{Object: content}, 0)
		if err != nil {
			return false, err
		}
		msg = strings.TrimSpace(msg)
		observed, _, _ := unstructured.NestedInt64(content, "status", "observedGeneration")
		if generation := obj.GetGeneration(); generation < minGeneration || observed < generation {
			done = false
			msg = fmt.Sprintf("Waiting for %s %q spec update to be observed (generation %d, observed %d)...",
				kindLabels[kind], ref.Name, max(generation, minGeneration), observed)
		}
		if msg != last {
			last = msg
			if opts.Progress != nil {
				opts.Progress(msg)
			}
		}
		return done, nil
	})
	if err == nil {
		return nil
	}
	if wait.Interrupted(err) && wctx.Err() != nil {
		if errors.Is(context.Cause(wctx), errTimeout) {
			return &TimeoutError{Ref: ref, Timeout: opts.Timeout, Status: last}
		}
		return fmt.Errorf("wait for rollout of %s (last status: %s): %w", ref, last, context.Cause(ctx))
	}
	return fmt.Errorf("wait for rollout of %s: %w", ref, err)
}

// watchFor returns kubectl's status viewer for kind and a list-watch of the
// single object ref (a metadata.name field selector), with the typed object
// the informer decodes.
func watchFor(client kubernetes.Interface, ref Ref, kind string) (polymorphichelpers.StatusViewer, cache.ListerWatcher, runtime.Object) {
	selector := fields.OneTermEqualSelector("metadata.name", ref.Name).String()
	var (
		viewer  polymorphichelpers.StatusViewer
		objType runtime.Object
		list    cache.ListWithContextFunc
		watchFn cache.WatchFuncWithContext
	)
	switch kind {
	case KindDeployment:
		c := client.AppsV1().Deployments(ref.Namespace)
		viewer, objType = &polymorphichelpers.DeploymentStatusViewer{}, &appsv1.Deployment{}
		list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
		watchFn = c.Watch
	case KindDaemonSet:
		c := client.AppsV1().DaemonSets(ref.Namespace)
		viewer, objType = &polymorphichelpers.DaemonSetStatusViewer{}, &appsv1.DaemonSet{}
		list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
		watchFn = c.Watch
	case KindStatefulSet:
		c := client.AppsV1().StatefulSets(ref.Namespace)
		viewer, objType = &polymorphichelpers.StatefulSetStatusViewer{}, &appsv1.StatefulSet{}
		list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
		watchFn = c.Watch
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = selector
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = selector
			return watchFn(ctx, o)
		},
	}
	// Like kubectl: streaming lists (WatchList) unless the client, such as
	// the fake clientset, says it does not support them.
	return viewer, cache.ToListWatcherWithWatchListSemantics(lw, client), objType
}
