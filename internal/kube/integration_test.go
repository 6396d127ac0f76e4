package kube_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/cmd/ztunnel"
	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/sandbox/cluster"
)

// TestPortForwardOnSandbox reads a pod's admin port through a real
// kube-apiserver and kwok's port-forward, with client-go's websocket dialer,
// then runs `meshca ztunnel certs` against the same pod.
func TestPortForwardOnSandbox(t *testing.T) {
	bin, err := cluster.FindBinDir()
	if err != nil {
		t.Fatalf("find bin dir: %v", err)
	}
	cfg := cluster.Config{Dir: t.TempDir(), BinDir: bin, Logf: t.Logf}
	if missing := cfg.Missing(); len(missing) > 0 {
		msg := fmt.Sprintf("sandbox binaries not built (missing %s); run hack/controlplane.sh", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	if err := c.AddNodes(ctx, 1, "node"); err != nil {
		t.Fatal(err)
	}

	// A ztunnel pod on node-0 whose admin port kwok forwards to a local
	// server playing ztunnel's /config_dump.
	dump, err := os.ReadFile("../proxy/testdata/reference/ztunnel-1.28.1-admin-test_dump_certs.json")
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/config_dump" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(dump)
	}))
	defer admin.Close()
	_, portText, _ := net.SplitHostPort(admin.Listener.Addr().String())
	adminPort, _ := strconv.Atoi(portText)

	cs := c.Client()
	const ns = "istio-system"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ztunnel-0", Labels: map[string]string{"app": "ztunnel"}},
		Spec: corev1.PodSpec{
			NodeName:    "node-0",
			Containers:  []corev1.Container{{Name: "istio-proxy", Image: "istio/ztunnel"}},
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.ForwardPort(ctx, ns, "ztunnel-0", kube.AdminPort, adminPort); err != nil {
		t.Fatal(err)
	}
	client, err := kube.NewClientFromConfig(c.RESTConfig(), "", false)
	if err != nil {
		t.Fatal(err)
	}
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, "ztunnel-0", metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod never ran: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}

	f := kube.NewFetcher(client)
	f.Backoff = 200 * time.Millisecond
	f.Attempts = 10 // kwok learns about the PortForward asynchronously
	got, err := f.Get(ctx, ns, "ztunnel-0", "/config_dump")
	if err != nil {
		t.Fatalf("get through port-forward: %v", err)
	}
	if !bytes.Equal(got, dump) {
		t.Errorf("got %d bytes, want the %d of the dump", len(got), len(dump))
	}

	t.Run("a non-200 answer names the pod and the status", func(t *testing.T) {
		_, err := f.Get(ctx, ns, "ztunnel-0", "/nothing")
		var fe *kube.Error
		if !errors.As(err, &fe) || fe.Reason != kube.ReasonHTTPStatus || fe.StatusCode != 404 || !strings.Contains(err.Error(), "pod istio-system/ztunnel-0:") {
			t.Errorf("err = %v, want a 404 naming the pod", err)
		}
	})
	t.Run("a port nothing forwards is refused, naming the pod", func(t *testing.T) {
		g := kube.NewFetcher(client)
		g.Port, g.Attempts, g.Timeout = 15001, 1, 10*time.Second
		_, err := g.Get(ctx, ns, "ztunnel-0", "/config_dump")
		var fe *kube.Error
		if !errors.As(err, &fe) || fe.Reason != kube.ReasonPortForward || !strings.Contains(err.Error(), "pod istio-system/ztunnel-0: port-forward to port 15001") {
			t.Errorf("err = %v, want a refused port-forward naming the pod", err)
		}
		t.Logf("refused: %v", err)
	})
	t.Run("the ztunnel on a node is found through the API", func(t *testing.T) {
		p, err := kube.PodOnNode(ctx, cs, "app=ztunnel", "node-0")
		if err != nil || p.Name != "ztunnel-0" {
			t.Errorf("PodOnNode = %v, %v", p, err)
		}
	})
	t.Run("meshca ztunnel certs --node reads the live pod", func(t *testing.T) {
		var out, errOut bytes.Buffer
		env := &cli.Env{
			Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
			Kube:    genericclioptions.NewConfigFlags(true),
			Now:     func() time.Time { return time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) },
		}
		root := &cobra.Command{Use: "meshca", SilenceUsage: true, SilenceErrors: true}
		env.Kube.AddFlags(root.PersistentFlags())
		root.AddCommand(ztunnel.NewCmd(env))
		root.SetArgs([]string{"--kubeconfig", c.Kubeconfig(), "ztunnel", "certs", "--node", "node-0", "-o", "wide"})
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("meshca ztunnel certs: %v\n%s", err, errOut.String())
		}
		want, err := os.ReadFile("../proxy/testdata/golden/ztunnel-reference.wide")
		if err != nil {
			t.Fatal(err)
		}
		if out.String() != string(want) {
			t.Errorf("stdout:\n%s\nwant:\n%s", out.String(), want)
		}
	})
}
