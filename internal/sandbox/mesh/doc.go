// Package mesh is the sandbox's simulated Istio data plane: in-process
// stand-ins for ztunnel and for the istio-agent of envoy proxies (waypoints,
// gateways, sidecars) that obtain their certificates from the REAL istiod over
// its CA API, hold and refresh them exactly as the real proxies do
// (istio-ca-facts.md §3 and §4), serve the real admin dumps meshca reads, and
// speak real TLS 1.3 mutual TLS to each other so that a traffic Probe can count
// the handshakes a CA rotation breaks.
//
// What is faithful, and where each rule comes from:
//
//   - CA client (CAClient): an ECDSA P-256 key and a CSR whose only SAN is the
//     SPIFFE URI, sent to istio.v1.auth.IstioCertificateService/CreateCertificate
//     over TLS to istiod's secure gRPC port with ServerName
//     istiod.istio-system.svc, trusting only the proxy's current roots for
//     istiod, with the metadata "authorization: Bearer <token>" and
//     "clusterid: <cluster>" (local-control-plane.md, "CSR to istiod"). The
//     response is the leaf, then istiod's cert-chain.pem, then the WHOLE
//     root-cert.pem as one last element (facts §1); that last element is split
//     into roots.
//   - Ztunnel: one certificate per SPIFFE identity of the ambient workloads on
//     its node, state Initializing → Available or "Unavailable: <reason>",
//     refresh at half the lifetime (SECRET_TTL), roots = every certificate of
//     the response's last element with duplicates kept, and its trust in
//     istiod read ONCE at pod start in 1.28 (re-read on every CSR with
//     CACertWatcher, modelling ztunnel#1775) — facts §3. /config_dump is served in
//     ztunnel's format (camelCase, base64 PEM, decimal serials, RFC 3339 Z).
//   - Agent (istio-agent + envoy): secret "default" (leaf and chain) and
//     "ROOTCA" (roots de-duplicated and sorted by PEM text), refresh at half
//     the lifetime, and PCDS only when live on the pod (PROXY_CONFIG_XDS_AGENT
//     and istiod's ISTIO_MULTIROOT_MESH): a changed trust bundle updates ROOTCA
//     and re-signs at once; without PCDS new roots arrive at refresh or restart
//     (facts §2 and §4). /config_dump serves envoy's SecretsConfigDump.
//   - Probe: real TLS 1.3 handshakes between the proxies' mTLS listeners, each
//     side verifying the peer chain against its CURRENT roots and the peer's
//     SPIFFE URI SAN; long-lived connections kept open per pair kind with a
//     ping every PingInterval; refusals when a target (a node's ztunnel, a
//     waypoint or gateway Deployment) has no live proxy; resets when a
//     long-lived connection ends without the probe closing it, with the
//     reason the proxy recorded; failed CSRs (IssuanceFailed); and pairs
//     whose end holds no certificate because its CSR failed count as
//     failures, not skips.
//   - Termination (Drain, DrainDeadline): a terminating proxy takes no new
//     connection (its target moves to the newer proxy, or has none), keeps
//     what it holds, and ends it at its self-termination deadline — ztunnel
//     at grace − 5 s above a 10 s grace period, else grace − 1 s; envoy
//     after terminationDrainDuration (5 s) bounded by the grace period —
//     facts §7.
//
// Every listener binds 127.0.0.1 on a free port; the sandbox orchestrator maps
// a pod's port 15000 to AdminAddr. Stop on any proxy closes its listeners and
// waits for all of its goroutines.
//
// Wiring, for the orchestrator: per ztunnel pod, StartZtunnel with the node,
// a CAClient (istiod's secure gRPC address and a TokenFunc backed by the
// TokenRequest API, audience istio-ca), the istio-ca-root-cert bytes read at
// pod start and SECRET_TTL; then SetIdentities whenever the ambient workloads
// on the node change. Per waypoint, gateway or sidecar pod, StartAgent with
// the pod's ServiceAccount identity, the same CA settings and trust bytes, and
// PCDS = pod env PROXY_CONFIG_XDS_AGENT && istiod env ISTIO_MULTIROOT_MESH;
// call PushTrustBundle on every Agent whenever istiod's root-cert.pem bytes
// change. A pod restart is a new Start with the ConfigMap's bytes at that
// moment and Drain on the old proxy once its pod is deleted. One Probe, fed
// with one Endpoint per target (the newest ready proxy), runs for the
// sandbox's lifetime; wire every proxy's OnIssuanceFailure to its
// IssuanceFailed.
package mesh
