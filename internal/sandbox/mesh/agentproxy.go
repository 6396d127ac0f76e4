package mesh

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// AgentProxyOptions configures the probe's side of an envoy pod run by the
// real pilot-agent.
type AgentProxyOptions struct {
	// Kind is KindWaypoint, KindGateway or KindSidecar.
	Kind Kind
	// Namespace and Pod name the proxy's pod; Node is its node.
	Namespace, Pod, Node string
	// Identity is the pod's ServiceAccount identity.
	Identity Identity
	// SDSSocket is the agent's SDS socket (its working directory's
	// var/run/secrets/workload-spiffe-uds/socket).
	SDSSocket string
	// EventLog is the event log of the envoy stand-in the agent runs (see
	// StartEnvoyInbound): it names the stand-in's inbound listener, where
	// it serves the probe's handshakes, and its outbound listener, through
	// which the pod originates the probe's connections.
	EventLog string
	// Exited closes when the pod's pilot-agent process has exited (its
	// envoy is gone by then).
	Exited <-chan struct{}
	// Now is the clock for TLS verification; time.Now when nil.
	Now func() time.Time
	// Logger receives the logs; slog.Default() when nil.
	Logger *slog.Logger
}

// AgentProxy is the probe's view of an envoy pod whose istio-agent is the
// real pilot-agent. Both ends of the pod's probe connections are the pod's
// own envoy stand-in process, which the agent started:
//   - the probe dials its inbound listener, which presents the agent's
//     "default" secret and trusts exactly its "ROOTCA";
//   - connections the pod originates go through its outbound listener:
//     the stand-in makes the mTLS connection with the same secrets.
//
// Why the stand-in rejected a handshake or ended a connection is read from
// its event log. An SDS client of the agent's socket here (a second
// subscriber the agent serves the same secrets to) tells the sandbox what
// the pod holds, for its status and readiness; nothing here requests a
// certificate or decides trust on its own.
type AgentProxy struct {
	kind     Kind
	name     string
	node     string
	identity Identity
	events   *eventReader
	exited   <-chan struct{}
	now      func() time.Time
	log      *slog.Logger
	sds      *SDSWatch
	done     chan struct{}
	once     sync.Once
	exitOnce sync.Once

	// outbound are the long-lived connections the pod originated.
	outbound outboundConns

	mu      sync.Mutex
	cert    *Certificate
	roots   []*x509.Certificate
	lastErr string
	// exitedAt is when the agent process was seen to exit.
	exitedAt time.Time
	// inboundAddr and outboundListener are the stand-in's listeners,
	// once its log named them.
	inboundAddr, outboundListener string
}

// StartAgentProxy subscribes to the agent's SDS socket and follows the
// stand-in's event log. Stop ends both.
func StartAgentProxy(opts AgentProxyOptions) (*AgentProxy, error) {
	switch opts.Kind {
	case KindWaypoint, KindGateway, KindSidecar:
	default:
		return nil, fmt.Errorf("agent proxy %s/%s: kind %q: expected waypoint, gateway or sidecar", opts.Namespace, opts.Pod, opts.Kind)
	}
	if opts.Namespace == "" || opts.Pod == "" || opts.SDSSocket == "" || opts.EventLog == "" || opts.Exited == nil {
		return nil, errors.New("agent proxy: namespace, pod name, SDS socket, event log and the agent's exit are required")
	}
	name := opts.Namespace + "/" + opts.Pod
	label := string(opts.Kind) + "/" + name
	if err := opts.Identity.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	p := &AgentProxy{kind: opts.Kind, name: name, node: opts.Node, identity: opts.Identity, now: now,
		events: newEventReader(opts.EventLog), exited: opts.Exited,
		log: log.With("proxy", label), done: make(chan struct{})}
	p.sds = NewSDSWatch(opts.SDSSocket, label, p.log, p.update)
	if err := p.sds.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	go func() {
		select {
		case <-p.exited:
			p.agentExited()
		case <-p.done:
		}
	}()
	return p, nil
}

// update takes in a secret the agent pushed.
func (p *AgentProxy) update(s SDSSecret) {
	switch s.Name {
	case SecretDefault:
		c, err := s.Certificate()
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.lastErr = err.Error()
			return
		}
		p.cert, p.lastErr = c, ""
	case SecretRootCA:
		roots, err := s.Roots()
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.lastErr = err.Error()
			return
		}
		p.roots = roots
	}
}

// Kind returns the proxy's kind.
func (p *AgentProxy) Kind() Kind { return p.kind }

// Name returns "<namespace>/<pod>".
func (p *AgentProxy) Name() string { return p.name }

// Identity returns the proxy's workload identity.
func (p *AgentProxy) Identity() Identity { return p.identity }

// Certificate returns the agent's current "default" secret, nil before the
// first.
func (p *AgentProxy) Certificate() *Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cert
}

// RootCA returns the roots of the agent's current "ROOTCA" secret.
func (p *AgentProxy) RootCA() []*x509.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.roots
}

// LastError is the last SDS problem, or that the stand-in has not opened
// its listeners; empty while the pod is ready.
func (p *AgentProxy) LastError() string {
	p.mu.Lock()
	lastErr, cert := p.lastErr, p.cert
	p.mu.Unlock()
	switch {
	case lastErr != "":
		return lastErr
	case cert == nil && p.sds.LastError() != "":
		return p.sds.LastError()
	case cert == nil:
		return "no secret from the agent's SDS yet"
	}
	if in, out := p.listeners(); in == "" || out == "" {
		return "the envoy stand-in has not opened its listeners yet (see " + p.events.path + ")"
	}
	return ""
}

// Endpoint describes the proxy for the Probe: its address is the envoy
// stand-in's inbound listener.
func (p *AgentProxy) Endpoint() Endpoint {
	in, _ := p.listeners()
	return Endpoint{Kind: p.kind, Name: p.name, Node: p.node, Identities: []string{p.identity.String()}, Address: in, Proxy: p}
}

// listeners are the stand-in's inbound and outbound listeners, empty
// until its event log names them (it binds them itself, on any free port).
func (p *AgentProxy) listeners() (in, out string) {
	p.mu.Lock()
	in, out = p.inboundAddr, p.outboundListener
	p.mu.Unlock()
	if in != "" && out != "" {
		return in, out
	}
	in, _, _ = p.events.listener()
	out = p.events.outboundListener()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inboundAddr, p.outboundListener = in, out
	return in, out
}

// credentials implements Proxy: the agent's "default" and "ROOTCA", as
// this side's SDS subscription holds them.
func (p *AgentProxy) credentials(identity string) (*Certificate, []*x509.Certificate, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert == nil || len(p.roots) == 0 || (identity != "" && identity != p.identity.String()) {
		return nil, nil, false
	}
	return p.cert, p.roots, true
}

func (p *AgentProxy) server() serverSide { return p }

// outboundAddr implements outboundVia.
func (p *AgentProxy) outboundAddr() string {
	_, out := p.listeners()
	return out
}

// issuanceError implements Proxy: the CSR is the agent's; the sandbox
// reads its failures from the agent's own counter.
func (p *AgentProxy) issuanceError(string) string { return "" }

// Ready implements Proxy: both secrets are held, and the stand-in's
// listeners are open.
func (p *AgentProxy) Ready() bool {
	_, _, ok := p.credentials("")
	in, out := p.listeners()
	return ok && in != "" && out != ""
}

// Drain implements Proxy: the pod is terminating. pilot-agent drains its
// envoy and ends it after its terminationDrainDuration; this side takes no
// new outbound connection from now on and ends those it holds when the
// agent has exited. after and reason are the sandbox's expectation; the
// reason recorded is what the stand-in's log and the agent's exit show.
func (p *AgentProxy) Drain(after time.Duration, _ string) {
	p.log.Info("envoy pod terminating: pilot-agent drains its envoy", "expected drain", after.String())
	p.outbound.close()
}

// agentExited ends the connections the pod originated, as its envoy's end
// does, and stops the SDS subscription.
func (p *AgentProxy) agentExited() {
	p.onExit()
	p.Stop()
}

// onExit records when the agent was seen to exit and ends the connections
// the pod originated with the reason; once.
func (p *AgentProxy) onExit() {
	p.exitOnce.Do(func() {
		p.mu.Lock()
		p.exitedAt = p.now()
		p.mu.Unlock()
		p.outbound.endAll(p.exitReason())
	})
}

// exitReason says how the pod's envoy ended, from the stand-in's log and
// the agent's exit.
func (p *AgentProxy) exitReason() string {
	p.mu.Lock()
	at := p.exitedAt
	p.mu.Unlock()
	drained := p.events.drainedAt()
	who := fmt.Sprintf("%s pod %s", p.kind, p.name)
	if drained.IsZero() {
		return who + ": its envoy ended with pilot-agent, without a drain"
	}
	return fmt.Sprintf("%s terminated: pilot-agent drained its envoy (POST /drain_listeners at %s), which ended %s later with the pod's processes",
		who, drained.UTC().Format("15:04:05.000Z"), at.Sub(drained).Round(100*time.Millisecond))
}

// Stop ends the SDS subscription and the connections the pod originated.
// It is safe to call more than once.
func (p *AgentProxy) Stop() {
	p.once.Do(func() {
		close(p.done)
		p.outbound.endAll("proxy " + string(p.kind) + "/" + p.name + " stopped (pod deleted)")
		p.sds.Stop()
	})
}

// closed implements serverSide: the pod's agent has exited or the proxy
// was stopped.
func (p *AgentProxy) closed() bool {
	select {
	case <-p.done:
		return true
	case <-p.exited:
		return true
	default:
		return false
	}
}

// takeError implements serverSide: the stand-in's reason for rejecting the
// handshake from remote.
func (p *AgentProxy) takeError(remote string) (string, bool) {
	return p.events.take(true, remote)
}

// exitWait bounds how long endReason waits for a drained pod's agent to
// exit: the stand-in dies a moment before the agent that killed it.
const exitWait = 2 * time.Second

// endReason implements serverSide: why the connection whose probe-side
// address is local (or, for a connection this pod accepted, the address it
// saw) ended on this pod. The stand-in's log says why when it ended the
// connection itself; after a drain, the connection ended with the
// stand-in's process when the agent, or kubelet, killed it.
func (p *AgentProxy) endReason(local string) (string, bool) {
	if r, ok := p.outbound.take(local); ok {
		return r, true
	}
	if r, ok := p.events.take(false, local); ok {
		return r, true
	}
	if p.events.drainedAt().IsZero() {
		return "", false
	}
	t := time.NewTimer(exitWait)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-p.done:
	case <-t.C:
		return "", false
	}
	p.onExit()
	if r, ok := p.outbound.take(local); ok {
		return r, true
	}
	return p.exitReason(), true
}

// trackOutbound implements serverSide.
func (p *AgentProxy) trackOutbound(c net.Conn) (untrack func(), ok bool) {
	if p.closed() {
		return nil, false
	}
	return p.outbound.track(c)
}
