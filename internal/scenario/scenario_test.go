package scenario_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/sandbox"
	"github.com/meshca/meshca/internal/sandbox/mesh"
	"github.com/meshca/meshca/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	os.Exit(m.Run())
}

// gracePeriod scales the charts' 30 s termination grace period down so that
// drains end within a phase; ztunnel's deadline keeps its rule (grace − 1 s
// at this size).
const gracePeriod = 3 * time.Second

// start starts a sandbox for a scenario: 3 nodes, 6 workloads, both flags of
// a mesh ready to rotate unless opts says otherwise, a fast probe with
// long-lived connections, and a short grace period.
func start(t *testing.T, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Workloads == 0 {
		opts.Workloads = 2 * opts.Nodes
	}
	opts.ProbeInterval = 20 * time.Millisecond
	opts.GracePeriod = gracePeriod
	opts.Logf = func(string, ...any) {}
	return sandboxtest.Start(t, opts)
}

// meshca runs the meshca command in-process and returns its exit code and
// output (stdout then stderr).
func meshca(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	code := app.Run(ctx, args, &cli.Env{Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}})
	return code, out.String() + errOut.String()
}

// newRoot writes a new root for the rotation with meshca's CA toolkit.
func newRoot(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "new-root")
	if code, out := meshca(t, "ca", "root", "--out", dir, "--key-type", "ecdsa-p256"); code != 0 {
		t.Fatalf("meshca ca root: exit %d\n%s", code, out)
	}
	return dir
}

// row is what the probe counted during one phase of a scenario.
type row struct {
	scenario, phase string
	s               mesh.Snapshot
	wall            time.Duration
}

func (r row) String() string {
	var restarts []string
	for _, k := range slices.Sorted(maps.Keys(r.s.Restarts)) {
		restarts = append(restarts, fmt.Sprintf("%s %d", k, r.s.Restarts[k]))
	}
	rs := strings.Join(restarts, ", ")
	if rs == "" {
		rs = "none"
	}
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %d | %d | %s | %s |", r.scenario, r.phase,
		r.s.Handshakes, r.s.Failures, r.s.Refused, r.s.Connections, r.s.Resets, r.s.IssuanceFailures, rs, r.wall.Round(100*time.Millisecond))
}

const tableHeader = "| scenario | phase | handshakes | failures | refused | long-lived conns | resets | failed CSRs | proxy restarts | wall |\n|---|---|---|---|---|---|---|---|---|---|"

// measure runs meshca with args as one phase: it zeroes the probe, runs the
// command, then waits until every terminating proxy has passed its drain
// deadline (its resets belong to this phase) and the probe has made some
// more handshakes, and returns what the probe counted.
func measure(t *testing.T, sb *sandbox.Sandbox, scenario, phase string, args ...string) row {
	t.Helper()
	sb.ResetProbe()
	t0 := time.Now()
	code, out := meshca(t, args...)
	wall := time.Since(t0)
	if code != 0 {
		t.Fatalf("%s, %s: meshca %s: exit %d\n%s", scenario, phase, strings.Join(args, " "), code, out)
	}
	settle(t, sb)
	r := row{scenario: scenario, phase: phase, s: sb.Probe(), wall: wall}
	t.Log(r)
	return r
}

// settle waits until no proxy is draining any more and the probe has made
// 100 more handshakes.
func settle(t *testing.T, sb *sandbox.Sandbox) {
	t.Helper()
	mark := sb.Probe().Handshakes
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		return sb.Draining() == 0 && sb.Probe().Handshakes >= mark+100, nil
	})
	if err != nil {
		t.Fatalf("the sandbox did not settle: %d proxies draining, %d handshakes since the phase ended", sb.Draining(), sb.Probe().Handshakes-mark)
	}
}

// rotateArgs are the flags every scenario's rotation shares.
func rotateArgs(sb *sandbox.Sandbox, extra ...string) []string {
	return append([]string{"rotate", "--kubeconfig", sb.Kubeconfig(), "--yes", "--key-type", "ecdsa-p256",
		"--reload-timeout", "1m", "--rollout-timeout", "2m", "--verify-timeout", "3m"}, extra...)
}

// phased runs trust, issue and retire one after the other, each measured.
func phased(t *testing.T, sb *sandbox.Sandbox, scenario string, args ...string) []row {
	t.Helper()
	var rows []row
	for _, phase := range []string{"trust", "issue", "retire"} {
		rows = append(rows, measure(t, sb, scenario, phase, rotateArgs(sb, append(args, "--until", phase)...)...))
	}
	return rows
}

// assertNoDisruption checks the promise of a phased rotation: no failed
// handshake, no refused connection, no failed certificate request.
func assertNoDisruption(t *testing.T, rows []row) {
	t.Helper()
	for _, r := range rows {
		if r.s.Handshakes == 0 {
			t.Errorf("%s, %s: the probe made no handshake", r.scenario, r.phase)
		}
		if r.s.Failures != 0 || r.s.Refused != 0 || r.s.IssuanceFailures != 0 || r.s.AdmissionFailures != 0 {
			t.Errorf("%s, %s: %d failed handshakes, %d refused, %d failed CSRs, %d failed admission checks; want 0\n%s", r.scenario, r.phase,
				r.s.Failures, r.s.Refused, r.s.IssuanceFailures, r.s.AdmissionFailures, events(r.s))
		}
	}
}

// events lists up to 10 events of a snapshot, for failure messages.
func events(s mesh.Snapshot) string {
	var b strings.Builder
	for i, e := range s.Events {
		if i == 10 {
			fmt.Fprintf(&b, "  … %d more\n", len(s.Events)-10)
			break
		}
		fmt.Fprintf(&b, "  %s %s %s%s: %s\n", e.Time.Format("15:04:05.000"), e.Type, e.Pair, e.Proxy, e.Reason)
	}
	return b.String()
}

func logTable(t *testing.T, rows []row) {
	t.Helper()
	var b strings.Builder
	b.WriteString("\n" + tableHeader + "\n")
	for _, r := range rows {
		b.WriteString(r.String() + "\n")
	}
	t.Log(b.String())
}

// TestPhasedRotationScenarios runs meshca's phased rotation in each
// scenario of the proving ground, each on its own sandbox, and checks that
// no phase fails a handshake, refuses a connection or fails a certificate
// request. Resets and restarts are reported as they honestly are.
func TestPhasedRotationScenarios(t *testing.T) {
	for name, tc := range map[string]struct {
		// desc says what the scenario exercises (names stay free of
		// commas: they become directory names that kwok flags split).
		desc string
		opts sandbox.Options
		// noPCDS creates the envoy pods without PROXY_CONFIG_XDS_AGENT.
		noPCDS bool
		// ca returns the rotate flag naming the new CA.
		ca func(t *testing.T, sb *sandbox.Sandbox) []string
	}{
		"default":        {desc: "ztunnel 1.28.1, SECRET_TTL 24h, PCDS"},
		"cert-ttl-2m":    {desc: "SECRET_TTL 2m: refresh during the rotation", opts: sandbox.Options{CertTTL: 2 * time.Minute}},
		"no-pcds":        {desc: "xds-agent=false: envoys without PCDS", noPCDS: true},
		"ztunnel-1.28.6": {desc: "ztunnel 1.28.6: CA_CERT_WATCHER", opts: sandbox.Options{ZtunnelVersion: "1.28.6"}},
		"ztunnel-1.30":   {desc: "ztunnel 1.30.0", opts: sandbox.Options{ZtunnelVersion: "1.30"}},
		"tools-certs-subjects": {
			desc: "old and new root both O=Istio, CN=Root CA, RSA 4096, as tools/certs names them",
			opts: sandbox.Options{RootSubject: &pki.RootOptions{CommonName: "Root CA", Organization: "Istio", KeyType: pki.RSA4096}},
			ca: func(t *testing.T, sb *sandbox.Sandbox) []string {
				root, err := pki.NewRoot(pki.RootOptions{CommonName: "Root CA", Organization: "Istio", KeyType: pki.RSA4096})
				if err != nil {
					t.Fatal(err)
				}
				dir := filepath.Join(t.TempDir(), "new-root")
				if err := bundle.WriteRoot(dir, root, false); err != nil {
					t.Fatal(err)
				}
				return []string{"--root", dir}
			},
		},
		"intermediate-only": {
			desc: "same root, new intermediate",
			ca: func(t *testing.T, sb *sandbox.Sandbox) []string {
				dir := filepath.Join(t.TempDir(), "new-intermediate")
				if code, out := meshca(t, "ca", "intermediate", "--root", filepath.Join(sb.CADir(), "root"), "--cluster", "sandbox", "--out", dir, "--key-type", "ecdsa-p256"); code != 0 {
					t.Fatalf("meshca ca intermediate: exit %d\n%s", code, out)
				}
				return []string{"--ca-dir", filepath.Join(dir, "sandbox")}
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			opts := sandboxtest.Healthy(tc.opts)
			opts.XDSAgent = !tc.noPCDS
			sb := start(t, opts)
			args := []string{"--root", newRoot(t)}
			if tc.ca != nil {
				args = tc.ca(t, sb)
			}
			rows := phased(t, sb, name+" ("+tc.desc+")", args...)
			logTable(t, rows)
			assertNoDisruption(t, rows)
		})
	}
}

// TestOneStepProcedureFails runs the field note's procedure under the same
// probe: it must show failures, or the probe proves nothing.
func TestOneStepProcedureFails(t *testing.T) {
	t.Parallel()
	sb := start(t, sandboxtest.Healthy(sandbox.Options{}))
	r := measure(t, sb, "one-step: the field note's procedure", "all", rotateArgs(sb, "--root", newRoot(t), "--strategy", "one-step", "--i-accept-downtime")...)
	logTable(t, []row{r})
	if r.s.Failures == 0 {
		t.Errorf("the one-step procedure failed no handshake (%d made): the probe cannot tell a broken rotation", r.s.Handshakes)
	}
}
