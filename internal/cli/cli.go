// Package cli holds what every command package shares: the environment a
// command runs in (streams, kube flags, clock) and the error values that carry
// an exit code up to internal/app, the one place that turns them into exit
// statuses.
package cli

import (
	"errors"
	"fmt"
	"time"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// Exit codes, documented in `meshca --help`.
const (
	// ExitOK: success (warnings allowed).
	ExitOK = 0
	// ExitFailure: an error, or a check that failed.
	ExitFailure = 1
	// ExitUsage: bad flags or arguments.
	ExitUsage = 2
	// ExitWarning: a check passed but found warnings past a threshold.
	ExitWarning = 3
)

// Env is what a command needs from its surroundings. Tests build one with
// buffers for streams and a fixed clock.
type Env struct {
	Streams genericiooptions.IOStreams
	// Kube holds --kubeconfig, -n, --as, --token, --user and the other
	// kubeconfig overrides (global flags). Its Context is the first --context.
	Kube *genericclioptions.ConfigFlags
	// Contexts are the global --context flags, in order; commands that span
	// several clusters (rotate, status, rollback) take them all, the others
	// accept one.
	Contexts []string
	// Now is the clock; never nil once app has built the Env.
	Now func() time.Time
	// Version is meshca's version, for what it writes (reports).
	Version string
}

// ExitError carries an exit code with an error. A nil Err means the command
// already printed everything it had to say.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Exit wraps err with an exit code.
func Exit(code int, err error) error { return &ExitError{Code: code, Err: err} }

// Silent returns an error that only sets the exit code: the command has
// already reported the problem on its streams.
func Silent(code int) error { return &ExitError{Code: code} }

// AnnotationMultiContext is the command annotation that, set to "true", lets
// a command take the global --context flag several times (one per cluster).
const AnnotationMultiContext = "meshca.io/multi-context"

// Usage marks err as a usage error (exit 2).
func Usage(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// Code returns the exit code for err: 0 for nil, the code of an ExitError,
// and ExitFailure otherwise.
func Code(err error) int {
	if err == nil {
		return ExitOK
	}
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	return ExitFailure
}
