package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/klog/v2"
	"k8s.io/streaming/pkg/httpstream"
)

// AdminPort is the admin port of ztunnel and envoy, bound to localhost in
// the pod (facts §3, §4).
const AdminPort = 15000

// Defaults of a Fetcher.
const (
	DefaultTimeout  = 10 * time.Second
	DefaultAttempts = 3
	DefaultBackoff  = 500 * time.Millisecond
	DefaultMaxBytes = 64 << 20
)

// Reason classifies a fetch failure so that a fleet walk can report it.
type Reason string

// Reasons of an Error.
const (
	// ReasonPodNotFound: the pod does not exist.
	ReasonPodNotFound Reason = "PodNotFound"
	// ReasonPodNotRunning: the pod exists but is not running.
	ReasonPodNotRunning Reason = "PodNotRunning"
	// ReasonPortForward: the port-forward could not be set up, or the pod
	// refused the connection to the port.
	ReasonPortForward Reason = "PortForward"
	// ReasonHTTPStatus: the admin API answered with a status other than 200.
	ReasonHTTPStatus Reason = "HTTPStatus"
	// ReasonTimeout: no answer within the per-attempt timeout.
	ReasonTimeout Reason = "Timeout"
	// ReasonTooLarge: the answer exceeded MaxBytes.
	ReasonTooLarge Reason = "TooLarge"
	// ReasonAPI: the API server failed a request (e.g. reading the pod).
	ReasonAPI Reason = "API"
)

// Error is a failed fetch from one pod. Its message names the pod.
type Error struct {
	// Namespace and Pod name the pod.
	Namespace, Pod string
	// Reason classifies the failure.
	Reason Reason
	// StatusCode is the HTTP status for ReasonHTTPStatus.
	StatusCode int
	// Attempts is how many attempts were made.
	Attempts int
	// Err is the underlying error.
	Err error
}

// Error names the pod and says what failed.
func (e *Error) Error() string {
	msg := fmt.Sprintf("pod %s/%s: %v", e.Namespace, e.Pod, e.Err)
	if e.Attempts > 1 {
		msg += fmt.Sprintf(" (after %d attempts)", e.Attempts)
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Fetcher reads HTTP paths from a port of pods through port-forwards. It is
// safe for concurrent use: each Get opens its own forward on a free local
// port.
type Fetcher struct {
	// Config and Clientset reach the API server.
	Config    *rest.Config
	Clientset kubernetes.Interface
	// Port is the pod port (AdminPort by default).
	Port int
	// Timeout bounds each attempt: port-forward setup plus the request.
	Timeout time.Duration
	// Attempts is the number of tries for transient failures (at least 1).
	Attempts int
	// Backoff is the wait before the second attempt, doubled each time.
	Backoff time.Duration
	// MaxBytes bounds the response body.
	MaxBytes int64
	// SkipPodCheck skips the pod GET before each read, for callers that
	// have just listed the pods and know they run (a fleet walk): it
	// halves the API requests of a walk.
	SkipPodCheck bool

	// forward opens a port-forward; a seam for tests.
	forward func(ctx context.Context, namespace, pod string, port int) (*forwarding, error)
}

// NewFetcher returns a Fetcher for c with the defaults.
func NewFetcher(c *Client) *Fetcher {
	return &Fetcher{
		Config:    c.Config,
		Clientset: c.Clientset,
		Port:      AdminPort,
		Timeout:   DefaultTimeout,
		Attempts:  DefaultAttempts,
		Backoff:   DefaultBackoff,
		MaxBytes:  DefaultMaxBytes,
	}
}

// Get checks that the pod is running (unless SkipPodCheck), then GETs path (with its query, e.g.
// "/config_dump") from the pod's port through a port-forward, retrying
// transient failures. Failures are *Error values naming the pod.
func (f *Fetcher) Get(ctx context.Context, namespace, pod, path string) ([]byte, error) {
	fail := func(reason Reason, attempts int, err error) *Error {
		return &Error{Namespace: namespace, Pod: pod, Reason: reason, Attempts: attempts, Err: err}
	}
	if !f.SkipPodCheck {
		p, err := f.Clientset.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return nil, fail(ReasonPodNotFound, 1, errors.New("not found"))
		case err != nil:
			return nil, fail(ReasonAPI, 1, fmt.Errorf("get pod: %w", err))
		}
		if err := running(p); err != nil {
			return nil, fail(ReasonPodNotRunning, 1, err)
		}
	}
	attempts := max(f.Attempts, 1)
	backoff := f.Backoff
	var last *attemptError
	for i := 1; i <= attempts; i++ {
		if i > 1 {
			select {
			case <-ctx.Done():
				return nil, fail(last.reason, i-1, last.err)
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		body, aerr := f.attempt(ctx, namespace, pod, path)
		if aerr == nil {
			return body, nil
		}
		last = aerr
		if !aerr.transient || ctx.Err() != nil {
			e := fail(aerr.reason, i, aerr.err)
			e.StatusCode = aerr.status
			return nil, e
		}
	}
	e := fail(last.reason, attempts, last.err)
	e.StatusCode = last.status
	return nil, e
}

// running refuses pods that cannot serve: not yet running, finished, or
// being deleted.
func running(p *corev1.Pod) error {
	if p.DeletionTimestamp != nil {
		return errors.New("pod is terminating")
	}
	if p.Status.Phase != corev1.PodRunning {
		phase := string(p.Status.Phase)
		if phase == "" {
			phase = "Unknown"
		}
		return fmt.Errorf("pod is %s, not Running", phase)
	}
	return nil
}

type attemptError struct {
	reason    Reason
	status    int
	transient bool
	err       error
}

func (f *Fetcher) attempt(ctx context.Context, namespace, pod, path string) ([]byte, *attemptError) {
	port := f.Port
	if port == 0 {
		port = AdminPort
	}
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	forward := f.forward
	if forward == nil {
		forward = f.portForward
	}
	fw, err := forward(ctx, namespace, pod, port)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &attemptError{reason: ReasonTimeout, transient: true, err: fmt.Errorf("port-forward to port %d: timed out after %s", port, timeout)}
		}
		return nil, &attemptError{reason: ReasonPortForward, transient: true, err: fmt.Errorf("port-forward to port %d: %w", port, err)}
	}
	defer fw.stop()

	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(fw.localPort)) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, &attemptError{reason: ReasonPortForward, err: fmt.Errorf("build request for %s: %w", path, err)}
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &attemptError{reason: ReasonTimeout, transient: true, err: fmt.Errorf("GET %s on port %d: timed out after %s", path, port, timeout)}
		}
		if msg := fw.pod(); msg != "" {
			// The pod side refused: nothing listens on the port (yet).
			return nil, &attemptError{reason: ReasonPortForward, transient: true, err: fmt.Errorf("port-forward to port %d refused: %s", port, msg)}
		}
		return nil, &attemptError{reason: ReasonPortForward, transient: true, err: fmt.Errorf("GET %s on port %d: %w", path, port, err)}
	}
	defer func() { _ = resp.Body.Close() }()
	limit := f.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, &attemptError{reason: ReasonTimeout, transient: true, err: fmt.Errorf("GET %s on port %d: timed out after %s reading the answer", path, port, timeout)}
		}
		return nil, &attemptError{reason: ReasonPortForward, transient: true, err: fmt.Errorf("GET %s on port %d: read answer: %w", path, port, err)}
	}
	if int64(len(body)) > limit {
		return nil, &attemptError{reason: ReasonTooLarge, err: fmt.Errorf("GET %s on port %d: answer larger than %d bytes", path, port, limit)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &attemptError{
			reason:    ReasonHTTPStatus,
			status:    resp.StatusCode,
			transient: resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests,
			err:       fmt.Errorf("GET %s on port %d: HTTP %s: %s", path, port, resp.Status, snippet(body)),
		}
	}
	return body, nil
}

// snippet is the start of an error body, on one line.
func snippet(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}

// forwarding is one open port-forward.
type forwarding struct {
	localPort int
	stop      func()
	// podError returns what the pod side reported for a refused
	// connection (client-go only logs it).
	podError func() string
}

func (fw *forwarding) pod() string {
	if fw.podError == nil {
		return ""
	}
	return fw.podError()
}

// portForward opens a port-forward to the pod on a free local port, dialing
// the API server with SPDY over websocket and falling back to plain SPDY
// when the server cannot upgrade (as kubectl port-forward does).
func (f *Fetcher) portForward(ctx context.Context, namespace, pod string, port int) (*forwarding, error) {
	u := f.Clientset.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(namespace).Name(pod).SubResource("portforward").URL()
	rec := &errorRecorder{}
	logger := logr.New(rec)

	transport, upgrader, err := spdy.RoundTripperFor(f.Config)
	if err != nil {
		return nil, fmt.Errorf("spdy transport: %w", err)
	}
	spdyDialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	wsDialer, err := portforward.NewSPDYOverWebsocketDialerWithLogger(logger, u, f.Config)
	if err != nil {
		return nil, fmt.Errorf("websocket dialer: %w", err)
	}
	dialer := portforward.NewFallbackDialer(wsDialer, spdyDialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})

	fctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddressesWithContext(fctx, dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, ready, io.Discard, io.Discard)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("port-forward ended before it was ready")
		}
		return nil, err
	case <-ctx.Done():
		cancel()
		drain(done)
		return nil, ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) == 0 {
		cancel()
		drain(done)
		return nil, fmt.Errorf("port-forward has no local port: %w", err)
	}
	return &forwarding{
		localPort: int(ports[0].Local),
		stop: func() {
			cancel()
			drain(done)
		},
		podError: func() string {
			// client-go reports the pod side's refusal shortly after the
			// local connection closes; give it a moment.
			deadline := time.Now().Add(300 * time.Millisecond)
			for rec.last() == "" && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			return rec.last()
		},
	}, nil
}

// errorRecorder is a logr sink that keeps the last error client-go's
// port-forwarder reports (it logs pod-side failures such as "connection
// refused" instead of returning them) and discards everything else, so that
// nothing reaches stderr behind the caller's back.
type errorRecorder struct {
	mu  sync.Mutex
	err string
}

func (r *errorRecorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// The logr.LogSink methods: only errors are kept.

func (r *errorRecorder) Init(logr.RuntimeInfo)                 {}
func (r *errorRecorder) Enabled(int) bool                      { return false }
func (r *errorRecorder) Info(int, string, ...any)              {}
func (r *errorRecorder) WithValues(...any) logr.LogSink        { return r }
func (r *errorRecorder) WithName(string) logr.LogSink          { return r }
func (r *errorRecorder) Error(err error, msg string, _ ...any) { r.record(err, msg) }

func (r *errorRecorder) record(err error, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err = strings.TrimSpace(err.Error())
	} else {
		r.err = msg
	}
}

// drain waits for the port-forward goroutine to end; its error, if any, was
// already reported through the forwarder's error output.
func drain(done <-chan error) {
	if err := <-done; err != nil {
		slog.Debug("port-forward ended", "err", err)
	}
}
