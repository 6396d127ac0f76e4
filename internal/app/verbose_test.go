package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/klog/v2"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/cli"
)

// kubeconfigFor writes a kubeconfig pointing at url.
func kubeconfigFor(t *testing.T, url string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, url)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func runApp(args ...string) (string, int) {
	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	code := app.Run(context.Background(), args, env)
	return errOut.String(), code
}

// TestVerboseShowsDebugLogsAndKlog: -v logs each API request and the client
// it built, and klog (client-go's logger) goes to the same stderr.
func TestVerboseShowsDebugLogsAndKlog(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`))
	}))
	defer srv.Close()
	kc := kubeconfigFor(t, srv.URL)

	quiet, _ := runApp("check", "--kubeconfig", kc)
	if strings.Contains(quiet, "level=DEBUG") {
		t.Errorf("without -v, debug lines were printed:\n%s", quiet)
	}

	var out, errOut bytes.Buffer
	env := &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, Now: time.Now}
	app.Run(context.Background(), []string{"-v", "check", "--kubeconfig", kc}, env)
	got := errOut.String()
	for _, want := range []string{`level=DEBUG msg="kubernetes client" server=` + srv.URL, `level=DEBUG msg="api request" method=GET`, "status=404"} {
		if !strings.Contains(got, want) {
			t.Errorf("-v stderr lacks %q:\n%s", want, got)
		}
	}
	klog.V(2).InfoS("klog probe line")
	if !strings.Contains(errOut.String(), "klog probe line") {
		t.Errorf("a klog V(2) line did not reach meshca's stderr under -v:\n%s", errOut.String())
	}
}
