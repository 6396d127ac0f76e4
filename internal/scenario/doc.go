// Package scenario is meshca's proving ground: tests that run a rotation
// (or the field note's one-step procedure) through the meshca command on a
// sandbox under probe traffic, scenario by scenario — certificate lifetime,
// PCDS, ztunnel version, tools/certs-style subjects, intermediate-only, two
// clusters — and report, per phase, every disruption a user would feel:
// failed handshakes, refused connections, resets of long-lived connections,
// failed certificate requests and proxy restarts. The package has no code
// of its own beyond these tests.
package scenario
