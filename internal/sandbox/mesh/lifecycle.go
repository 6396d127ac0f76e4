package mesh

import (
	"time"
)

// Termination defaults of the Istio 1.28.1 charts (facts §7).
const (
	// DefaultTerminationGracePeriod is terminationGracePeriodSeconds of the
	// ztunnel DaemonSet and of the gateway and waypoint Deployments.
	DefaultTerminationGracePeriod = 30 * time.Second
	// EnvoyDrainDuration is istio-agent's terminationDrainDuration: how long
	// a terminating envoy keeps its connections before closing them.
	EnvoyDrainDuration = 5 * time.Second
)

// DrainDeadline is how long a terminating proxy of kind keeps the
// connections it holds, given its pod's termination grace period (facts §7):
// ztunnel closes what is still open at its self-termination deadline, grace
// − 5 s when the grace period exceeds 10 s and grace − 1 s otherwise
// (ztunnel src/config.rs); an envoy drains for terminationDrainDuration,
// bounded by the grace period.
func DrainDeadline(kind Kind, grace time.Duration) time.Duration {
	var d time.Duration
	switch {
	case kind != KindZtunnel:
		d = min(EnvoyDrainDuration, grace-time.Second)
	case grace > 10*time.Second:
		d = grace - 5*time.Second
	default:
		d = grace - time.Second
	}
	return max(d, 0)
}

// drain runs a proxy's termination: its listener marks it draining at once,
// and after the deadline every connection it holds ends with reason and the
// proxy stops. It returns at once; a Stop before the deadline (done closes)
// ends the wait.
func drain(s *mtlsServer, after time.Duration, reason string, done <-chan struct{}, stop func()) {
	s.startDrain()
	go func() {
		t := time.NewTimer(after)
		defer t.Stop()
		select {
		case <-t.C:
			s.endAll(reason)
			stop()
		case <-done:
		}
	}()
}
