package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func pod(ns, name, node string, phase corev1.PodPhase, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// serverPort is the local port of an httptest server.
func serverPort(t *testing.T, s *httptest.Server) int {
	t.Helper()
	_, p, err := net.SplitHostPort(s.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func TestFetcherGet(t *testing.T) {
	terminating := pod("istio-system", "ztunnel-old", "n1", corev1.PodRunning, nil)
	terminating.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	clientset := func() *fake.Clientset {
		return fake.NewClientset(
			pod("istio-system", "ztunnel-a", "n1", corev1.PodRunning, nil),
			pod("istio-system", "ztunnel-pending", "n1", corev1.PodPending, nil),
			terminating,
		)
	}

	type result struct {
		Body       string
		Reason     Reason
		StatusCode int
		Attempts   int
		Forwards   int32
	}
	tests := map[string]struct {
		pod string
		// handler serves the admin API; call counts from 1.
		handler func(call int32, w http.ResponseWriter, r *http.Request)
		// forwardErr fails the port-forward itself.
		forwardErr error
		// podError is what client-go logs when the pod refuses the port.
		podError string
		timeout  time.Duration
		maxBytes int64
		want     result
		message  []string
	}{
		"a running pod's admin path is fetched through the forward": {
			pod: "ztunnel-a",
			handler: func(_ int32, w http.ResponseWriter, r *http.Request) {
				_, _ = fmt.Fprint(w, r.URL.RequestURI())
			},
			want: result{Body: "/config_dump?mask=dynamic_active_secrets", Forwards: 1},
		},
		"a missing pod is named and never forwarded": {
			pod:     "ztunnel-gone",
			want:    result{Reason: ReasonPodNotFound, Attempts: 1},
			message: []string{"pod istio-system/ztunnel-gone: not found"},
		},
		"a pending pod is refused": {
			pod:     "ztunnel-pending",
			want:    result{Reason: ReasonPodNotRunning, Attempts: 1},
			message: []string{"pod istio-system/ztunnel-pending: pod is Pending, not Running"},
		},
		"a terminating pod is refused": {
			pod:     "ztunnel-old",
			want:    result{Reason: ReasonPodNotRunning, Attempts: 1},
			message: []string{"pod istio-system/ztunnel-old: pod is terminating"},
		},
		"a 404 is reported with its status and not retried": {
			pod: "ztunnel-a",
			handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "invalid path. admin paths are:\n /config_dump", http.StatusNotFound)
			},
			want:    result{Reason: ReasonHTTPStatus, StatusCode: 404, Attempts: 1, Forwards: 1},
			message: []string{"pod istio-system/ztunnel-a: GET /config_dump?mask=dynamic_active_secrets on port 15000: HTTP 404 Not Found: invalid path. admin paths are: /config_dump"},
		},
		"a 503 is retried until the pod answers": {
			pod: "ztunnel-a",
			handler: func(call int32, w http.ResponseWriter, _ *http.Request) {
				if call < 3 {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				_, _ = fmt.Fprint(w, "ok")
			},
			want: result{Body: "ok", Forwards: 3},
		},
		"a port-forward that cannot be set up is retried and reported": {
			pod:        "ztunnel-a",
			forwardErr: errors.New("error upgrading connection: pods \"ztunnel-a\" is forbidden"),
			want:       result{Reason: ReasonPortForward, Attempts: 3, Forwards: 3},
			message:    []string{"pod istio-system/ztunnel-a: port-forward to port 15000: error upgrading connection", "(after 3 attempts)"},
		},
		"the pod refusing the port is explained with client-go's message": {
			pod:      "ztunnel-a",
			podError: "error forwarding port 15000 to pod 1234, uid : failed to connect to localhost:15000 inside namespace: connection refused",
			want:     result{Reason: ReasonPortForward, Attempts: 3, Forwards: 3},
			message:  []string{"pod istio-system/ztunnel-a: port-forward to port 15000 refused: error forwarding port 15000", "connection refused"},
		},
		"a pod that does not answer in time times out on every attempt": {
			pod: "ztunnel-a",
			handler: func(_ int32, _ http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
			},
			timeout: 50 * time.Millisecond,
			want:    result{Reason: ReasonTimeout, Attempts: 3, Forwards: 3},
			message: []string{"pod istio-system/ztunnel-a: GET /config_dump?mask=dynamic_active_secrets on port 15000: timed out after 50ms"},
		},
		"an answer larger than the limit is refused": {
			pod: "ztunnel-a",
			handler: func(_ int32, w http.ResponseWriter, _ *http.Request) {
				_, _ = fmt.Fprint(w, strings.Repeat("x", 100))
			},
			maxBytes: 10,
			want:     result{Reason: ReasonTooLarge, Attempts: 1, Forwards: 1},
			message:  []string{"answer larger than 10 bytes"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var calls, forwards atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				tc.handler(calls.Add(1), w, r)
			}))
			defer srv.Close()
			// A listener that drops every connection, as a forward does when
			// the pod refuses the port.
			dropper, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = dropper.Close() }()
			go func() {
				for {
					c, err := dropper.Accept()
					if err != nil {
						return
					}
					_ = c.Close()
				}
			}()

			f := &Fetcher{Clientset: clientset(), Port: AdminPort, Timeout: tc.timeout, Attempts: 3, Backoff: time.Millisecond, MaxBytes: tc.maxBytes}
			f.forward = func(_ context.Context, namespace, name string, port int) (*forwarding, error) {
				forwards.Add(1)
				if namespace != "istio-system" || name != tc.pod || port != AdminPort {
					t.Errorf("forward to %s/%s:%d", namespace, name, port)
				}
				if tc.forwardErr != nil {
					return nil, tc.forwardErr
				}
				if tc.podError != "" {
					return &forwarding{localPort: dropper.Addr().(*net.TCPAddr).Port, stop: func() {}, podError: func() string { return tc.podError }}, nil
				}
				return &forwarding{localPort: serverPort(t, srv), stop: func() {}}, nil
			}
			body, err := f.Get(context.Background(), "istio-system", tc.pod, "/config_dump?mask=dynamic_active_secrets")
			got := result{Body: string(body), Forwards: forwards.Load()}
			var fe *Error
			if errors.As(err, &fe) {
				got.Reason, got.StatusCode, got.Attempts = fe.Reason, fe.StatusCode, fe.Attempts
			} else if err != nil {
				t.Fatalf("error %v is not a *kube.Error", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			for _, m := range tc.message {
				if err == nil || !strings.Contains(err.Error(), m) {
					t.Errorf("error %v does not contain %q", err, m)
				}
			}
		})
	}
}

func TestFetcherStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fetcher{Clientset: fake.NewClientset(pod("ns", "p", "n1", corev1.PodRunning, nil)), Attempts: 5, Backoff: time.Hour}
	f.forward = func(context.Context, string, string, int) (*forwarding, error) {
		cancel()
		return nil, errors.New("connection reset")
	}
	start := time.Now()
	_, err := f.Get(ctx, "ns", "p", "/config_dump")
	var fe *Error
	if !errors.As(err, &fe) || fe.Attempts != 1 {
		t.Fatalf("err = %v, want one attempt", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Error("Get waited for its backoff after cancellation")
	}
}

func TestPodOnNode(t *testing.T) {
	zt := map[string]string{"app": "ztunnel"}
	terminating := pod("istio-system", "ztunnel-old", "n1", corev1.PodRunning, zt)
	terminating.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	node := func(name string) *corev1.Node { return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}} }
	tests := map[string]struct {
		objects []any
		node    string
		want    string
		err     string
	}{
		"the ztunnel on the node is found in any namespace": {
			objects: []any{node("n1"), node("n2"),
				pod("kube-system", "ztunnel-1", "n1", corev1.PodRunning, zt),
				pod("kube-system", "ztunnel-2", "n2", corev1.PodRunning, zt),
				pod("apps", "web", "n1", corev1.PodRunning, map[string]string{"app": "web"}),
				terminating},
			node: "n1",
			want: "kube-system/ztunnel-1",
		},
		"a node without a ztunnel says so": {
			objects: []any{node("n1"), pod("istio-system", "ztunnel-2", "n2", corev1.PodRunning, zt)},
			node:    "n1",
			err:     `no pod "app=ztunnel" on node n1`,
		},
		"an unknown node says so": {
			node: "n9",
			err:  "node n9 not found",
		},
		"two ztunnels on one node ask for a name": {
			objects: []any{node("n1"), pod("istio-system", "ztunnel-1", "n1", corev1.PodRunning, zt), pod("istio-system", "ztunnel-2", "n1", corev1.PodRunning, zt)},
			node:    "n1",
			err:     `2 pods "app=ztunnel" on node n1`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cs := fake.NewClientset()
			for _, o := range tc.objects {
				var err error
				switch o := o.(type) {
				case *corev1.Pod:
					_, err = cs.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
				case *corev1.Node:
					_, err = cs.CoreV1().Nodes().Create(context.Background(), o, metav1.CreateOptions{})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			p, err := PodOnNode(context.Background(), cs, "app=ztunnel", tc.node)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Namespace + "/" + p.Name; got != tc.want {
				t.Errorf("pod = %s, want %s", got, tc.want)
			}
		})
	}
}
