package mesh

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/meshca/meshca/internal/pki"
)

// Identity is an Istio workload identity: the SPIFFE ID
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String returns the SPIFFE ID.
func (i Identity) String() string {
	return pki.SPIFFEID(i.TrustDomain, i.Namespace, i.ServiceAccount)
}

// ParseIdentity parses a SPIFFE ID of the Istio form
// spiffe://<td>/ns/<ns>/sa/<sa>.
func ParseIdentity(spiffeID string) (Identity, error) {
	u, err := url.Parse(spiffeID)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: %w", spiffeID, err)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if u.Scheme != "spiffe" || u.Host == "" || len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return Identity{}, fmt.Errorf("identity %q: not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>", spiffeID)
	}
	return Identity{TrustDomain: u.Host, Namespace: parts[1], ServiceAccount: parts[3]}, nil
}

func (i Identity) validate() error {
	if i.TrustDomain == "" || i.Namespace == "" || i.ServiceAccount == "" {
		return fmt.Errorf("identity %q: trust domain, namespace and service account are all required", i.String())
	}
	return nil
}
