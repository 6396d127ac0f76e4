package mesh

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// An envoy stand-in (internal/sandbox/envoystub) runs as its own process,
// started by the real pilot-agent, and serves the probe's mTLS handshakes
// itself with what the agent's SDS gave it. The probe, in the sandbox's
// process, must still learn why the stand-in rejected a handshake or ended
// a connection, as it does from an in-process listener. The stand-in writes
// each such verdict to an event log (JSON lines, one write per line, before
// the TLS alert goes out), and AgentProxy reads it back.

// The env that wires an envoy stand-in's inbound listener into the sandbox
// (pilot-agent passes its own env to its envoy): the pod port the sandbox,
// as kubelet and the pod's network, gave it, and the path of its event log.
const (
	EnvStubInbound  = "MESHCA_ENVOYSTUB_INBOUND"
	EnvStubEventLog = "MESHCA_ENVOYSTUB_EVENTS"
)

// The events of an envoy stand-in's event log.
const (
	// EventStarted: the stand-in's listener is open (PID, Addr).
	EventStarted = "started"
	// EventRejected: a handshake was refused (Client, Reason).
	EventRejected = recordReject
	// EventEnded: the stand-in ended a connection itself (Client, Reason).
	EventEnded = recordEnd
	// EventDraining: pilot-agent asked it to drain (POST /drain_listeners).
	EventDraining = "draining"
	// EventOutboundStarted: the stand-in's outbound listener is open
	// (Addr).
	EventOutboundStarted = "outbound-started"
)

// StubEvent is one line of an envoy stand-in's event log.
type StubEvent struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Client string    `json:"client,omitempty"`
	Reason string    `json:"reason,omitempty"`
	PID    int       `json:"pid,omitempty"`
	Addr   string    `json:"addr,omitempty"`
}

// EnvoyInboundOptions configures an envoy stand-in's inbound listener.
type EnvoyInboundOptions struct {
	// Name labels the listener in reasons and logs.
	Name string
	// Addr is where to listen: 127.0.0.1:port, or 127.0.0.1:0 for any
	// port (the one bound is in the log's started event).
	Addr string
	// EventLog is the path of the event log; it is created (0600) or
	// appended to.
	EventLog string
	// Credentials returns the "default" certificate and the "ROOTCA" roots
	// SDS gave the stand-in; ok is false until it holds both.
	Credentials func() (cert *Certificate, roots []*x509.Certificate, ok bool)
	// Now is the clock for TLS verification; time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
}

// EnvoyInbound is an envoy stand-in's inbound mTLS listener: each
// handshake presents the stand-in's current "default" certificate, whatever
// the SNI, and verifies the client against its current "ROOTCA".
type EnvoyInbound struct {
	srv *mtlsServer
	log *eventWriter
}

// StartEnvoyInbound opens the listener and its event log.
func StartEnvoyInbound(opts EnvoyInboundOptions) (*EnvoyInbound, error) {
	if opts.Addr == "" || opts.EventLog == "" || opts.Credentials == nil {
		return nil, errors.New("envoy inbound listener: address, event log and credentials are required")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	w, err := openEventWriter(opts.EventLog, now)
	if err != nil {
		return nil, err
	}
	creds := func(string) (*Certificate, []*x509.Certificate, bool) { return opts.Credentials() }
	// An envoy proxy has one identity, whatever the SNI.
	anySNI := func(string) (string, bool) { return "", true }
	srv, err := startMTLS(opts.Name, opts.Addr, creds, anySNI, now, log)
	if err != nil {
		_ = w.close()
		return nil, err
	}
	srv.mu.Lock()
	srv.onRecord = func(kind, client, reason string) { w.write(StubEvent{Event: kind, Client: client, Reason: reason}) }
	srv.mu.Unlock()
	w.write(StubEvent{Event: EventStarted, PID: os.Getpid(), Addr: srv.addr()})
	return &EnvoyInbound{srv: srv, log: w}, nil
}

// Addr is the listener's address.
func (e *EnvoyInbound) Addr() string { return e.srv.addr() }

// Drain marks the listener as draining, as envoy's /drain_listeners does:
// it keeps what it holds.
func (e *EnvoyInbound) Drain() {
	e.srv.startDrain()
	e.log.write(StubEvent{Event: EventDraining})
}

// Close ends every connection with reason (recorded in the event log),
// closes the listener and the log.
func (e *EnvoyInbound) Close(reason string) {
	e.srv.endAll(reason)
	e.srv.close()
	_ = e.log.close()
}

// ListenerStats are the inbound listener's counters, by envoy's names
// under listener.<address>.
type ListenerStats struct {
	DownstreamCxTotal, DownstreamCxActive        uint64
	SSLHandshake, SSLFailVerify, SSLConnectError uint64
}

// Stats returns the listener's counters.
func (e *EnvoyInbound) Stats() ListenerStats {
	s := e.srv.snapshot()
	return ListenerStats{DownstreamCxTotal: s.cxTotal, DownstreamCxActive: s.cxActive,
		SSLHandshake: s.handshakes, SSLFailVerify: s.verifyErrors, SSLConnectError: s.connErrors}
}

// eventWriter appends StubEvents to the log, one write per line.
type eventWriter struct {
	mu  sync.Mutex
	f   *os.File
	now func() time.Time
}

func openEventWriter(path string, now func() time.Time) (*eventWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("envoy stand-in event log: %w", err)
	}
	return &eventWriter{f: f, now: now}, nil
}

func (w *eventWriter) write(ev StubEvent) {
	ev.Time = w.now().UTC()
	line, err := json.Marshal(ev)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		_, _ = w.f.Write(append(line, '\n'))
	}
}

func (w *eventWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// eventReader follows an envoy stand-in's event log from the sandbox's
// side: rejections and ends by client address, and when it was asked to
// drain.
type eventReader struct {
	path string

	mu       sync.Mutex
	off      int64
	rejects  map[string]string
	ends     map[string]string
	started  *StubEvent
	outbound string
	draining time.Time
}

func newEventReader(path string) *eventReader {
	return &eventReader{path: path, rejects: map[string]string{}, ends: map[string]string{}}
}

// refreshLocked reads the complete lines written since the last read. A
// missing log (the stand-in has not started yet) is not an error.
func (r *eventReader) refreshLocked() error {
	f, err := os.Open(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(r.off, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReader(f)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			// A partial last line is read again next time.
			return nil
		}
		r.off += int64(len(line))
		var ev StubEvent
		if json.Unmarshal(bytes.TrimSpace(line), &ev) != nil {
			continue
		}
		r.apply(ev)
	}
}

func (r *eventReader) apply(ev StubEvent) {
	keep := func(m map[string]string) {
		if len(m) >= maxRecordedErrors {
			clear(m)
		}
		m[ev.Client] = ev.Reason
	}
	switch ev.Event {
	case EventStarted:
		r.started = &ev
		r.draining = time.Time{}
	case EventOutboundStarted:
		r.outbound = ev.Addr
	case EventRejected:
		keep(r.rejects)
	case EventEnded:
		keep(r.ends)
	case EventDraining:
		if r.draining.IsZero() {
			r.draining = ev.Time
		}
	}
}

// take returns and forgets the reason recorded for client in the rejections
// (reject) or the ends.
func (r *eventReader) take(reject bool, client string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.refreshLocked()
	m := r.ends
	if reject {
		m = r.rejects
	}
	reason, ok := m[client]
	delete(m, client)
	return reason, ok
}

// drainedAt is when the stand-in was asked to drain; zero if it was not.
func (r *eventReader) drainedAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.refreshLocked()
	return r.draining
}

// listener is the address and PID the stand-in reported at its start; ok
// is false before.
func (r *eventReader) listener() (addr string, pid int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.refreshLocked()
	if r.started == nil {
		return "", 0, false
	}
	return r.started.Addr, r.started.PID, true
}

// outboundListener is the address of the stand-in's outbound listener;
// empty before it started.
func (r *eventReader) outboundListener() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.refreshLocked()
	return r.outbound
}
