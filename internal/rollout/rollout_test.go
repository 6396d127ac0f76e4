package rollout_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/meshca/meshca/internal/rollout"
)

var restartTime = time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.UTC)

const restartStamp = "2026-03-04T05:06:07Z"

func TestRefString(t *testing.T) {
	ref := rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"}
	if got, want := ref.String(), "daemonset/istio-system/ztunnel"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestRestartPatchesTheTemplateAnnotation(t *testing.T) {
	tests := map[string]struct {
		obj  runtime.Object
		ref  rollout.Ref
		want map[string]string
	}{
		"a deployment keeps its other template annotations": {
			obj:  deployment("ns", "web", 2, map[string]string{"keep": "me", rollout.RestartedAtAnnotation: "2020-01-01T00:00:00Z"}),
			ref:  rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"},
			want: map[string]string{"keep": "me", rollout.RestartedAtAnnotation: restartStamp},
		},
		"a daemonset without template annotations gets one": {
			obj:  daemonSet("istio-system", "ztunnel", nil),
			ref:  rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"},
			want: map[string]string{rollout.RestartedAtAnnotation: restartStamp},
		},
		"a statefulset named with a lower-case kind": {
			obj:  statefulSet("db", "pg", nil),
			ref:  rollout.Ref{Kind: "statefulset", Namespace: "db", Name: "pg"},
			want: map[string]string{rollout.RestartedAtAnnotation: restartStamp},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(tc.obj)
			if err := rollout.Restart(t.Context(), client, tc.ref, restartTime); err != nil {
				t.Fatalf("Restart: %v", err)
			}
			patches := patchActions(client)
			if len(patches) != 1 {
				t.Fatalf("got %d patch actions, want 1: %v", len(patches), client.Actions())
			}
			p := patches[0]
			if p.GetPatchType() != types.StrategicMergePatchType || p.GetName() != tc.ref.Name || p.GetNamespace() != tc.ref.Namespace {
				t.Errorf("patch %s of %s/%s, want a strategic merge patch of %s/%s", p.GetPatchType(), p.GetNamespace(), p.GetName(), tc.ref.Namespace, tc.ref.Name)
			}
			var body any
			if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
				t.Fatalf("patch is not JSON: %v: %s", err, p.GetPatch())
			}
			wantBody := map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
				"annotations": map[string]any{rollout.RestartedAtAnnotation: restartStamp}}}}}
			if diff := cmp.Diff(wantBody, body); diff != "" {
				t.Errorf("patch body (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, templateAnnotations(t, client, tc.ref)); diff != "" {
				t.Errorf("template annotations after Restart (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRestartTwiceInOneSecondStillRestarts(t *testing.T) {
	ref := rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"}
	client := fake.NewClientset(daemonSet(ref.Namespace, ref.Name, nil))
	if err := rollout.Restart(t.Context(), client, ref, restartTime); err != nil {
		t.Fatalf("first Restart: %v", err)
	}
	later := restartTime.Add(50 * time.Millisecond)
	if err := rollout.Restart(t.Context(), client, ref, later); err != nil {
		t.Fatalf("second Restart in the same second: %v", err)
	}
	if got, want := templateAnnotations(t, client, ref)[rollout.RestartedAtAnnotation], "2026-03-04T05:06:07.94Z"; got != want {
		t.Errorf("restartedAt after a second restart in the same second = %q, want %q (a changed value)", got, want)
	}
	// An instant on a whole second has no fractional form: a second
	// restart at exactly that instant cannot change the annotation.
	whole := restartTime.Truncate(time.Second)
	err := rollout.Restart(t.Context(), client, ref, whole)
	if err != nil {
		t.Fatalf("third Restart: %v", err)
	}
	err = rollout.Restart(t.Context(), client, ref, whole)
	if err == nil || !strings.Contains(err.Error(), ref.String()) || !strings.Contains(err.Error(), "already restarted") {
		t.Errorf("Restart with the same whole-second instant again: err = %v, want 'already restarted' naming %s", err, ref)
	}
}

func TestRestartErrors(t *testing.T) {
	paused := deployment("ns", "web", 1, nil)
	paused.Spec.Paused = true
	tests := map[string]struct {
		objs []runtime.Object
		ref  rollout.Ref
		want []string
		is   error
	}{
		"a missing deployment": {
			ref:  rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "gone"},
			want: []string{"restart deployment/ns/gone", "not found"},
		},
		"a replicaset is not restartable": {
			ref:  rollout.Ref{Kind: "ReplicaSet", Namespace: "ns", Name: "web-abc"},
			want: []string{"replicaset/ns/web-abc"},
			is:   rollout.ErrNotRestartable,
		},
		"a paused deployment is refused": {
			objs: []runtime.Object{paused},
			ref:  rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"},
			want: []string{"deployment/ns/web", "paused", "kubectl rollout resume"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(tc.objs...)
			err := rollout.Restart(t.Context(), client, tc.ref, restartTime)
			if err == nil {
				t.Fatal("Restart succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if n := len(patchActions(client)); n != 0 {
				t.Errorf("%d patches sent, want none", n)
			}
		})
	}
}

func TestOwner(t *testing.T) {
	dep := deployment("ns", "web", 2, nil)
	dep.UID = "dep-uid"
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-7d4b9", UID: "rs-uid",
		OwnerReferences: []metav1.OwnerReference{controllerRef(appsv1.SchemeGroupVersion.String(), "Deployment", "web", "dep-uid")}}}
	orphanRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lonely-5f", UID: "orphan-uid"}}
	tests := map[string]struct {
		pod     *corev1.Pod
		want    rollout.Ref
		wantErr []string
		is      error
	}{
		"a deployment's pod, through its replicaset": {
			pod:  pod("ns", "web-7d4b9-x", controllerRef("apps/v1", "ReplicaSet", "web-7d4b9", "rs-uid")),
			want: rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"},
		},
		"a daemonset's pod": {
			pod:  pod("istio-system", "ztunnel-abcde", controllerRef("apps/v1", "DaemonSet", "ztunnel", "ds-uid")),
			want: rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"},
		},
		"a statefulset's pod": {
			pod:  pod("db", "pg-0", controllerRef("apps/v1", "StatefulSet", "pg", "sts-uid")),
			want: rollout.Ref{Kind: rollout.KindStatefulSet, Namespace: "db", Name: "pg"},
		},
		"a bare pod has no owner": {
			pod:     pod("ns", "bare", nil),
			wantErr: []string{"pod ns/bare", "no controller"},
			is:      rollout.ErrNotRestartable,
		},
		"a job's pod is not restartable": {
			pod:     pod("ns", "migrate-x", controllerRef(batchv1.SchemeGroupVersion.String(), "Job", "migrate", "job-uid")),
			wantErr: []string{"pod ns/migrate-x", "Job migrate"},
			is:      rollout.ErrNotRestartable,
		},
		"a non-controller owner reference does not count": {
			pod:     pod("ns", "adopted", &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ztunnel", UID: "ds-uid"}),
			wantErr: []string{"pod ns/adopted", "no controller"},
			is:      rollout.ErrNotRestartable,
		},
		"a replicaset without a deployment": {
			pod:     pod("ns", "lonely-5f-x", controllerRef("apps/v1", "ReplicaSet", "lonely-5f", "orphan-uid")),
			wantErr: []string{"pod ns/lonely-5f-x", "replicaset lonely-5f is not controlled by a deployment"},
			is:      rollout.ErrNotRestartable,
		},
		"a replicaset that no longer exists": {
			pod:     pod("ns", "old-1-x", controllerRef("apps/v1", "ReplicaSet", "old-1", "old-uid")),
			wantErr: []string{"pod ns/old-1-x", "not found"},
		},
		"a replicaset replaced under the same name": {
			pod:     pod("ns", "web-7d4b9-y", controllerRef("apps/v1", "ReplicaSet", "web-7d4b9", "stale-uid")),
			wantErr: []string{"pod ns/web-7d4b9-y", "replicaset web-7d4b9 was replaced"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(dep, rs, orphanRS)
			got, err := rollout.Owner(t.Context(), client, tc.pod)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Owner: %v", err)
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("Owner (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil {
				t.Fatalf("Owner = %v, want an error", got)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
		})
	}
}

func TestWaitDoesNotPassOnStaleStatus(t *testing.T) {
	// Right after a restart: generation 2, but the status still describes
	// generation 1, whose rollout was complete.
	d := deployment("ns", "web", 2, nil)
	d.Generation = 2
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	client := fake.NewClientset(d)
	ref := rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"}

	var mu sync.Mutex
	var progress []string
	stale := make(chan struct{})
	var statusWritten time.Time
	go func() {
		<-stale
		// The controller observes the new generation and rolls out.
		for _, st := range []appsv1.DeploymentStatus{
			{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 1, ReadyReplicas: 2, AvailableReplicas: 2},
			{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2},
		} {
			time.Sleep(20 * time.Millisecond)
			mu.Lock()
			statusWritten = time.Now()
			mu.Unlock()
			setDeploymentStatus(t, client, ref, st)
		}
	}()
	err := rollout.Wait(t.Context(), client, ref, rollout.Options{Timeout: 30 * time.Second, Progress: func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		if len(progress) == 0 {
			close(stale)
		}
		progress = append(progress, msg)
	}})
	returned := time.Now()
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		`Waiting for deployment "web" spec update to be observed (generation 2, observed 1)...`,
		`Waiting for deployment "web" rollout to finish: 1 out of 2 new replicas have been updated...`,
		`deployment "web" successfully rolled out`,
	}
	if diff := cmp.Diff(want, progress); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}
	if statusWritten.IsZero() || returned.Before(statusWritten) {
		t.Errorf("Wait returned at %v, before the final status was written at %v", returned, statusWritten)
	}
}

func TestWaitRequiresTheGenerationSeenAtStart(t *testing.T) {
	// The informer may serve an object older than the one Wait read at
	// start (a stale watch cache); its complete-looking status must not count.
	d := deployment("ns", "web", 1, nil)
	d.Generation = 3
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	stale := d.DeepCopy()
	stale.Generation, stale.Status.ObservedGeneration = 2, 2
	client := fake.NewClientset(d)
	client.PrependReactor("list", "deployments", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &appsv1.DeploymentList{ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []appsv1.Deployment{*stale}}, nil
	})
	client.PrependWatchReactor("deployments", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, watch.NewFake(), nil
	})
	ref := rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"}
	err := rollout.Wait(t.Context(), client, ref, rollout.Options{Timeout: 300 * time.Millisecond})
	var te *rollout.TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("Wait on a stale cached object: err = %v, want a timeout", err)
	}
	if want := `Waiting for deployment "web" spec update to be observed (generation 3, observed 2)...`; te.Status != want {
		t.Errorf("last status = %q, want %q", te.Status, want)
	}
}

func TestWaitErrors(t *testing.T) {
	onDelete := daemonSet("istio-system", "ztunnel", nil)
	onDelete.Spec.UpdateStrategy.Type = appsv1.OnDeleteDaemonSetStrategyType
	onDelete.Generation, onDelete.Status.ObservedGeneration = 1, 1
	lagging := daemonSet("istio-system", "ztunnel", nil)
	lagging.Generation = 2
	lagging.Status = appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, CurrentNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberAvailable: 1, NumberReady: 1}
	deadline := deployment("ns", "web", 2, nil)
	deadline.Generation, deadline.Status.ObservedGeneration = 4, 4
	deadline.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"}}
	ztunnel := rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"}
	web := rollout.Ref{Kind: rollout.KindDeployment, Namespace: "ns", Name: "web"}

	tests := map[string]struct {
		obj      runtime.Object
		ref      rollout.Ref
		timeout  time.Duration
		want     []string
		timedOut bool
	}{
		"a timeout says what is pending": {
			obj: lagging, ref: ztunnel, timeout: 200 * time.Millisecond, timedOut: true,
			want: []string{"daemonset/istio-system/ztunnel", "not complete after 200ms",
				`Waiting for daemon set "ztunnel" rollout to finish: 1 of 3 updated pods are available...`},
		},
		"an OnDelete daemonset has no rollout status": {
			obj: onDelete, ref: ztunnel,
			want: []string{"wait for rollout of daemonset/istio-system/ztunnel", "only available for RollingUpdate"},
		},
		"a deployment past its progress deadline": {
			obj: deadline, ref: web,
			want: []string{"wait for rollout of deployment/ns/web", "exceeded its progress deadline"},
		},
		"a missing workload": {
			ref:  rollout.Ref{Kind: rollout.KindStatefulSet, Namespace: "db", Name: "pg"},
			want: []string{"wait for rollout of statefulset/db/pg", "not found"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var client *fake.Clientset
			if tc.obj != nil {
				client = fake.NewClientset(tc.obj)
			} else {
				client = fake.NewClientset()
			}
			err := rollout.Wait(t.Context(), client, tc.ref, rollout.Options{Timeout: tc.timeout})
			if err == nil {
				t.Fatal("Wait succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			var te *rollout.TimeoutError
			if got := errors.As(err, &te); got != tc.timedOut {
				t.Errorf("error %v: a *TimeoutError = %v, want %v", err, got, tc.timedOut)
			}
			if got := errors.Is(err, context.DeadlineExceeded); got != tc.timedOut {
				t.Errorf("errors.Is(%v, context.DeadlineExceeded) = %v, want %v", err, got, tc.timedOut)
			}
		})
	}
}

func TestWaitFailsWhenTheWorkloadIsDeleted(t *testing.T) {
	ref := rollout.Ref{Kind: rollout.KindStatefulSet, Namespace: "db", Name: "pg"}
	sts := statefulSet("db", "pg", nil)
	sts.Generation = 2
	sts.Status.ObservedGeneration = 1
	client := fake.NewClientset(sts)
	errc := make(chan error, 1)
	go func() {
		errc <- rollout.Wait(t.Context(), client, ref, rollout.Options{Timeout: 30 * time.Second, Progress: func(string) {
			_ = client.AppsV1().StatefulSets("db").Delete(context.Background(), "pg", metav1.DeleteOptions{})
		}})
	}()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "statefulset/db/pg") || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("Wait on a deleted statefulset: err = %v, want 'deleted' naming statefulset/db/pg", err)
	}
}

func TestWaitReportsTheCallersCancellation(t *testing.T) {
	ref := rollout.Ref{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"}
	ds := daemonSet(ref.Namespace, ref.Name, nil)
	ds.Generation = 2
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 1, NumberAvailable: 3}
	ctx, cancel := context.WithCancel(t.Context())
	err := rollout.Wait(ctx, fake.NewClientset(ds), ref, rollout.Options{Progress: func(string) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	for _, w := range []string{"daemonset/istio-system/ztunnel", "1 out of 3 new pods have been updated"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestRestartAndWaitGoesInOrderAndStopsAtTheFirstFailure(t *testing.T) {
	istiod := deployment("istio-system", "istiod", 1, nil)
	istiod.Generation, istiod.Status = 1, appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}
	ztunnel := daemonSet("istio-system", "ztunnel", nil)
	ztunnel.Generation, ztunnel.Status = 1, appsv1.DaemonSetStatus{ObservedGeneration: 1, DesiredNumberScheduled: 2, UpdatedNumberScheduled: 2, NumberAvailable: 1}
	gw := deployment("gw", "ingress", 1, nil)
	client := fake.NewClientset(istiod, ztunnel, gw)
	refs := []rollout.Ref{
		{Kind: rollout.KindDeployment, Namespace: "istio-system", Name: "istiod"},
		{Kind: rollout.KindDaemonSet, Namespace: "istio-system", Name: "ztunnel"},
		{Kind: rollout.KindDeployment, Namespace: "gw", Name: "ingress"},
	}
	// The fake clientset does not bump generations on patch, so istiod's
	// complete status counts and ztunnel's rollout stays stuck.
	err := rollout.RestartAndWait(t.Context(), client, refs, rollout.Options{
		Timeout: 200 * time.Millisecond,
		Now:     func() time.Time { return restartTime },
	})
	var te *rollout.TimeoutError
	if !errors.As(err, &te) || te.Ref != refs[1] {
		t.Fatalf("err = %v, want a timeout of %s", err, refs[1])
	}
	var patched []string
	for _, p := range patchActions(client) {
		patched = append(patched, p.GetNamespace()+"/"+p.GetName())
	}
	if diff := cmp.Diff([]string{"istio-system/istiod", "istio-system/ztunnel"}, patched); diff != "" {
		t.Errorf("patched workloads (-want +got):\n%s", diff)
	}
}

func patchActions(client *fake.Clientset) []k8stesting.PatchAction {
	var out []k8stesting.PatchAction
	for _, a := range client.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok && a.GetVerb() == "patch" {
			out = append(out, p)
		}
	}
	return out
}

func templateAnnotations(t *testing.T, client kubernetes.Interface, ref rollout.Ref) map[string]string {
	t.Helper()
	ctx := t.Context()
	var (
		tmpl corev1.PodTemplateSpec
		err  error
	)
	switch ref.Kind {
	case rollout.KindDeployment:
		var d *appsv1.Deployment
		d, err = client.AppsV1().Deployments(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			tmpl = d.Spec.Template
		}
	case rollout.KindDaemonSet:
		var d *appsv1.DaemonSet
		d, err = client.AppsV1().DaemonSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			tmpl = d.Spec.Template
		}
	default:
		var s *appsv1.StatefulSet
		s, err = client.AppsV1().StatefulSets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			tmpl = s.Spec.Template
		}
	}
	if err != nil {
		t.Fatalf("get %s: %v", ref, err)
	}
	return tmpl.Annotations
}

func setDeploymentStatus(t *testing.T, client kubernetes.Interface, ref rollout.Ref, st appsv1.DeploymentStatus) {
	d, err := client.AppsV1().Deployments(ref.Namespace).Get(context.Background(), ref.Name, metav1.GetOptions{})
	if err != nil {
		t.Errorf("get %s: %v", ref, err)
		return
	}
	d.Status = st
	if _, err := client.AppsV1().Deployments(ref.Namespace).UpdateStatus(context.Background(), d, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("update status of %s: %v", ref, err)
	}
}

func controllerRef(apiVersion, kind, name string, uid types.UID) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: ptr.To(true)}
}

func pod(ns, name string, owner any) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	switch o := owner.(type) {
	case metav1.OwnerReference:
		p.OwnerReferences = []metav1.OwnerReference{o}
	case *metav1.OwnerReference:
		p.OwnerReferences = []metav1.OwnerReference{*o}
	}
	return p
}

func deployment(ns, name string, replicas int32, annotations map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: annotations}},
		},
	}
}

func daemonSet(ns, name string, annotations map[string]string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)},
		Spec: appsv1.DaemonSetSpec{
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
			Template:       corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: annotations}},
		},
	}
}

func statefulSet(ns, name string, annotations map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name)},
		Spec: appsv1.StatefulSetSpec{
			Replicas:       ptr.To[int32](1),
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType},
			Template:       corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: annotations}},
		},
	}
}
