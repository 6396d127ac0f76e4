package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The real pilot-agent counts its failed CSRs itself: the secret cache
// increments num_failed_outgoing_requests{request_type="csr"} (exported
// with the status server's istio_agent_ prefix on /stats/prometheus) and
// logs "failed to sign: <error>" for each. The probe counts failed CSRs of
// the simulated proxies as they happen; for a real agent it reads that
// counter, and the log line for the reason.
const (
	agentCSRFailuresMetric = "istio_agent_num_failed_outgoing_requests"
	agentCSRFailureLog     = "failed to sign"
	// agentCSRPoll is how often a real agent's counter is read.
	agentCSRPoll = time.Second
)

// csrWatch follows one real agent's failed-CSR counter.
type csrWatch struct {
	mu sync.Mutex
	// seen is the counter value already reported.
	seen float64
}

// watchAgentCSRs reports the failed CSRs of a real agent pod to the probe
// every agentCSRPoll until ctx ends (and syncAgentCSRs reads them on
// demand).
func (d *dataPlane) watchAgentCSRs(ctx context.Context, p *proxyPod) {
	wait.UntilWithContext(ctx, func(ctx context.Context) { d.syncAgentCSR(ctx, p) }, agentCSRPoll)
}

// syncAgentCSRs reads the counter of every live real agent now, so that a
// probe snapshot includes a CSR that failed less than agentCSRPoll ago.
func (d *dataPlane) syncAgentCSRs(ctx context.Context) {
	for _, p := range d.agentPods() {
		d.syncAgentCSR(ctx, p)
	}
}

// syncAgentCSR reports what p's agent counted since the last read, one
// failure each, with the reason of the agent's last "failed to sign" line.
// An agent that cannot be read (starting, stopping) reports nothing: its
// counter is read again next time.
func (d *dataPlane) syncAgentCSR(ctx context.Context, p *proxyPod) {
	w := &p.agent.csr
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := agentCSRFailures(ctx, p.agent.statusPort)
	if err != nil || n <= w.seen {
		return
	}
	reason := lastLine(filepath.Join(p.agent.dir, "pilot-agent.log"), agentCSRFailureLog)
	if reason == "" {
		reason = "pilot-agent counted a failed CSR (" + agentCSRFailuresMetric + ")"
	}
	for range int(n - w.seen) {
		d.issuanceFailed(string(p.kind)+"/"+p.pod, p.agent.identity, errors.New(reason))
	}
	w.seen = n
}

// agentCSRFailures reads the agent's failed-CSR counter from its status
// port; 0 before its first failure (the series does not exist yet).
func agentCSRFailures(ctx context.Context, statusPort int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", statusPort), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("pilot-agent /stats/prometheus: %s", resp.Status)
	}
	return csrFailuresIn(resp.Body)
}

// csrFailuresIn sums agentCSRFailuresMetric{request_type="csr"} in a
// Prometheus text exposition.
func csrFailuresIn(r io.Reader) (float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return 0, fmt.Errorf("pilot-agent metrics: %w", err)
	}
	f, ok := families[agentCSRFailuresMetric]
	if !ok {
		return 0, nil
	}
	var sum float64
	for _, m := range f.GetMetric() {
		if label(m, "request_type") != "csr" {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// lastLine returns the text after substr on the last line of file that
// holds it, or "".
func lastLine(file, substr string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if i := strings.Index(sc.Text(), substr); i >= 0 {
			last = strings.TrimSpace(sc.Text()[i:])
		}
	}
	return last
}
