package verify

import (
	"encoding/json"
	"math"
	"time"

	"github.com/meshca/meshca/internal/mesh"
)

// The JSON document of a Report.
const (
	// APIVersion of the FleetVerification document.
	APIVersion = "meshca.io/v1alpha1"
	// DocumentKind is the kind of the document.
	DocumentKind = "FleetVerification"
)

// Report is the outcome of a fleet verification.
//
// Its JSON form (MarshalJSON) is a stable schema, apiVersion
// meshca.io/v1alpha1, kind FleetVerification; fields are only ever added
// within an apiVersion:
//
//	apiVersion, kind
//	time             RFC 3339, when the walk started
//	ok               true when no proxy fails and every istio-ca-root-cert
//	                 ConfigMap matches (see OK)
//	expectation      {source, roots[] (sorted fingerprints), signer,
//	                 allowExtraRoots, rootCertSHA256, warnDays}
//	total            counts over every kind:
//	                 {total, match, stale, notRefreshing, expiring,
//	                 nothingToVerify, unreadable, notReady}
//	kinds[]          the same counts per kind, always the four kinds in the
//	                 order ztunnel, waypoint, gateway, sidecar: {kind, ...counts}
//	rootConfigMaps   {total, match, stale[] {namespace, roots[], problems[]}}
//	proxiesListed    "nonMatching" (the default) or "all"
//	proxies[]        {kind, namespace, name, node, owner {kind, name}, status
//	                 (match|stale|not-refreshing|expiring|nothing-to-verify|
//	                 unreadable|not-ready),
//	                 reason (why unreadable: PortForward, Timeout, HTTPStatus,
//	                 PodNotRunning, Unparsable, ...), identities, roots[],
//	                 duplicateRoots[], signers[], leafs[] {identity, notBefore,
//	                 notAfter, freshness (ok|expired|not-yet-valid|
//	                 not-refreshing)}, problems[], notes[]}
//	                 sorted by kind, namespace, name
//	walk             {parallel, timeoutSeconds, discoverySeconds, readSeconds}
//	warnings[]       discovery findings that did not stop the walk
//
// Fingerprints are SHA-256 of the certificate's DER in lowercase hex;
// problems and notes are sentences that use their first 12 digits.
type Report struct {
	// Time is when the walk started.
	Time time.Time
	// Expectation is what every proxy was checked against.
	Expectation Expectation
	// Total counts every proxy; Kinds count them per kind (always every
	// kind of mesh.Kinds, in that order).
	Total Counts
	Kinds []KindSummary
	// RootConfigMaps is the state of the istio-ca-root-cert ConfigMaps;
	// nil when they were not read.
	RootConfigMaps *ConfigMapSummary
	// Proxies holds the result of every proxy, in walk order.
	Proxies []Result
	// ListAll makes the JSON form list every proxy rather than only those
	// that do not match.
	ListAll bool
	// Walk says how the fleet was read.
	Walk Walk
	// Warnings are discovery findings that did not stop the walk.
	Warnings []string
}

// OK reports whether the fleet passes: no proxy is stale, not refreshing,
// expiring, unreadable or not ready, and every istio-ca-root-cert ConfigMap
// carries the expected roots (a stale ConfigMap means istiod has not taken
// the current cacerts).
// Proxies with nothing to verify neither pass nor fail: they are not counted
// as matches (Total.Match), but they do not make OK false, because a
// ztunnel without workloads holds nothing that could be wrong.
func (r *Report) OK() bool {
	if r.Total.Failing() > 0 {
		return false
	}
	return r.RootConfigMaps == nil || len(r.RootConfigMaps.Stale) == 0
}

// NonMatching returns the results that are not a match, in order.
func (r *Report) NonMatching() []Result {
	var out []Result
	for i := range r.Proxies {
		if r.Proxies[i].Status != StatusMatch {
			out = append(out, r.Proxies[i])
		}
	}
	return out
}

// Failing returns the results that fail (every status but match and
// nothing-to-verify), in order.
func (r *Report) Failing() []Result {
	var out []Result
	for i := range r.Proxies {
		if r.Proxies[i].Status.Failing() {
			out = append(out, r.Proxies[i])
		}
	}
	return out
}

// Kind returns the counts of kind k.
func (r *Report) Kind(k mesh.Kind) Counts {
	for _, ks := range r.Kinds {
		if ks.Kind == k {
			return ks.Counts
		}
	}
	return Counts{}
}

// Listing values of the JSON field proxiesListed.
const (
	ListedNonMatching = "nonMatching"
	ListedAll         = "all"
)

// Document is the JSON form of a Report (see Report for the schema). It is
// exported so that consumers can decode a document with encoding/json.
type Document struct {
	APIVersion     string            `json:"apiVersion"`
	Kind           string            `json:"kind"`
	Time           time.Time         `json:"time"`
	OK             bool              `json:"ok"`
	Expectation    Expectation       `json:"expectation"`
	Total          Counts            `json:"total"`
	Kinds          []KindSummary     `json:"kinds"`
	RootConfigMaps *ConfigMapSummary `json:"rootConfigMaps,omitempty"`
	ProxiesListed  string            `json:"proxiesListed"`
	Proxies        []Result          `json:"proxies"`
	Walk           WalkDocument      `json:"walk"`
	Warnings       []string          `json:"warnings,omitempty"`
}

// WalkDocument is Walk in the JSON form, durations in seconds.
type WalkDocument struct {
	Parallel         int     `json:"parallel"`
	TimeoutSeconds   float64 `json:"timeoutSeconds"`
	DiscoverySeconds float64 `json:"discoverySeconds"`
	ReadSeconds      float64 `json:"readSeconds"`
}

// Document returns the JSON form of r.
func (r *Report) Document() Document {
	d := Document{
		APIVersion:     APIVersion,
		Kind:           DocumentKind,
		Time:           r.Time,
		OK:             r.OK(),
		Expectation:    r.Expectation,
		Total:          r.Total,
		Kinds:          r.Kinds,
		RootConfigMaps: r.RootConfigMaps,
		ProxiesListed:  ListedNonMatching,
		Proxies:        r.NonMatching(),
		Walk: WalkDocument{
			Parallel:         r.Walk.Parallel,
			TimeoutSeconds:   seconds(r.Walk.Timeout),
			DiscoverySeconds: seconds(r.Walk.Discovery),
			ReadSeconds:      seconds(r.Walk.Read),
		},
		Warnings: r.Warnings,
	}
	if r.ListAll {
		d.ProxiesListed, d.Proxies = ListedAll, r.Proxies
	}
	if d.Proxies == nil {
		d.Proxies = []Result{}
	}
	if d.Expectation.Roots == nil {
		d.Expectation.Roots = []string{}
	}
	return d
}

// MarshalJSON writes the Document of r.
func (r *Report) MarshalJSON() ([]byte, error) { return json.Marshal(r.Document()) }

// seconds rounds a duration to milliseconds, in seconds.
func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }
