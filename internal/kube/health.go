package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// HealthOptions tune MonitorAPI. Zero values take the defaults: a probe
// every 2s, each bounded by 2s, and 3 failures in a row to declare the API
// server lost (so it is named within about 6s).
type HealthOptions struct {
	Interval time.Duration
	Timeout  time.Duration
	Failures int
}

// APIUnreachableError is the cause of a context cancelled by MonitorAPI.
type APIUnreachableError struct {
	// Server is the API server's address.
	Server string
	// Failures is the number of failed probes in a row, over Over.
	Failures int
	Over     time.Duration
	// Last is the last probe's error.
	Last error
}

// Error names the server, the evidence, and what to do next.
func (e *APIUnreachableError) Error() string {
	return fmt.Sprintf("the API server %s is unreachable (%d health checks over %s failed, last: %v); "+
		"what meshca already wrote stays in the cluster; when the API server is back, re-run the same command: it resumes from the cluster's state",
		e.Server, e.Failures, e.Over.Round(100*time.Millisecond), e.Last)
}

func (e *APIUnreachableError) Unwrap() error { return e.Last }

// MonitorAPI returns a context that is cancelled, with an
// *APIUnreachableError as its cause, once the API server behind client fails
// opts.Failures bounded health checks (GET /readyz) in a row. Long waits
// (watches, polls) otherwise keep retrying until their own timeout and
// report a slow rollout instead of a lost API server. A client without a
// REST client (the fake clientset) is not monitored. cancel releases it.
func MonitorAPI(ctx context.Context, client kubernetes.Interface, opts HealthOptions) (context.Context, context.CancelFunc) {
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Failures <= 0 {
		opts.Failures = 3
	}
	rc := client.Discovery().RESTClient()
	if rc == nil || (reflect.ValueOf(rc).Kind() == reflect.Pointer && reflect.ValueOf(rc).IsNil()) {
		return context.WithCancel(ctx)
	}
	mctx, cancel := context.WithCancelCause(ctx)
	go func() {
		t := time.NewTicker(opts.Interval)
		defer t.Stop()
		failed, first := 0, time.Time{}
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
			}
			began := time.Now()
			err := Ready(mctx, rc, opts.Timeout)
			switch {
			case err == nil:
				failed = 0
				continue
			case mctx.Err() != nil:
				return
			}
			if failed == 0 {
				first = began
			}
			failed++
			if failed >= opts.Failures {
				cancel(&APIUnreachableError{Server: rc.Get().URL().Host, Failures: failed, Over: time.Since(first), Last: err})
				return
			}
		}
	}()
	return mctx, func() { cancel(context.Canceled) }
}

// Ready asks the API server behind rc whether it is ready (GET /readyz),
// within timeout. Being refused the endpoint (401, 403) still proves the
// server answers, so it counts as ready.
func Ready(ctx context.Context, rc rest.Interface, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := rc.Get().AbsPath("/readyz").Timeout(timeout).Do(ctx).Error()
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		switch status.Status().Code {
		case http.StatusUnauthorized, http.StatusForbidden:
			return nil
		}
	}
	return err
}

// UnreachableCause returns the *APIUnreachableError that cancelled ctx, or
// err unchanged: what a wait reports when MonitorAPI stopped it.
func UnreachableCause(ctx context.Context, err error) error {
	var u *APIUnreachableError
	if errors.As(context.Cause(ctx), &u) {
		return u
	}
	return err
}
