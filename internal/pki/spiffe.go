package pki

import (
	"fmt"
	"net/url"
	"strings"
)

// SPIFFEID returns the Istio workload identity
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

func spiffeURI(trustDomain, ns, sa string) (*url.URL, error) {
	if trustDomain == "" || strings.ContainsAny(trustDomain, "/:@ ") {
		return nil, fmt.Errorf("invalid trust domain %q: use a DNS-like name such as cluster.local", trustDomain)
	}
	return url.Parse(SPIFFEID(trustDomain, ns, sa))
}
