package sandbox

import (
	"strings"
	"testing"
)

// TestCSRFailuresIn reads the real agent's failed-CSR counter as its
// status server exports it, ignoring the other request types and series.
func TestCSRFailuresIn(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       float64
	}{
		{"no series before the first failure", "# TYPE istio_agent_num_outgoing_requests counter\nistio_agent_num_outgoing_requests{request_type=\"csr\"} 4\n", 0},
		{"csr only", "# TYPE istio_agent_num_failed_outgoing_requests counter\n" +
			"istio_agent_num_failed_outgoing_requests{request_type=\"csr\"} 3\n" +
			"istio_agent_num_failed_outgoing_requests{request_type=\"other\"} 7\n" +
			"# TYPE envoy_server_state gauge\nenvoy_server_state{} 0\n", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := csrFailuresIn(strings.NewReader(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %v failed CSRs, want %v", got, tc.want)
			}
		})
	}
	if _, err := csrFailuresIn(strings.NewReader("not { metrics")); err == nil {
		t.Error("garbage parsed without error")
	}
}
