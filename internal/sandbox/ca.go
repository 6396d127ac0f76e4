package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/internal/bundle"
	"github.com/meshca/meshca/internal/pki"
)

// CA modes of the sandbox (--ca): how istiod gets the CA it signs with.
const (
	// CAPlugin installs cacerts from a root and an intermediate the sandbox
	// generates (the default).
	CAPlugin = "plugin"
	// CASelfSigned installs no cacerts: istiod generates its self-signed CA
	// and keeps it in Secret istio-ca-secret, as a default Istio install.
	CASelfSigned = "self-signed"
	// CAExpiring installs cacerts whose intermediate (or root, with
	// Options.ExpireRoot) expires Options.CALifetime after start, for
	// drills of an expired CA.
	CAExpiring = "expiring"
	// DefaultCALifetime is the lifetime of the expiring CA.
	DefaultCALifetime = 5 * time.Minute
)

// caBundles makes the cacerts bundle of every member for the CA mode: nil
// bundles for CASelfSigned (no cacerts).
func caBundles(o *Options, names []string) (map[string]*bundle.Bundle, error) {
	switch o.CA {
	case CASelfSigned:
		out := map[string]*bundle.Bundle{}
		for _, n := range names {
			out[n] = nil
		}
		return out, nil
	case CAExpiring:
		return generateExpiringCA(o, names, time.Now())
	}
	return generateCA(o.Dir, o.KeyType, o.RootSubject, names)
}

// generateExpiringCA makes a fresh CA (never reused: it must expire after
// this start) under Dir/ca like generateCA: with ExpireRoot the root lives
// CALifetime (its intermediates are clamped to it), otherwise only the
// intermediates do.
func generateExpiringCA(o *Options, names []string, now time.Time) (map[string]*bundle.Bundle, error) {
	caDir := filepath.Join(o.Dir, CADir)
	if err := os.RemoveAll(caDir); err != nil {
		return nil, fmt.Errorf("remove %s: %w", caDir, err)
	}
	ro := pki.RootOptions{KeyType: o.KeyType, CommonName: "Sandbox Expiring Root CA " + now.UTC().Format("2006-01-02T15:04:05"), Now: now}
	if o.ExpireRoot {
		ro.Lifetime = o.CALifetime
	}
	root, err := pki.NewRoot(ro)
	if err != nil {
		return nil, err
	}
	if err := bundle.WriteRoot(filepath.Join(caDir, "root"), root, true); err != nil {
		return nil, err
	}
	out := map[string]*bundle.Bundle{}
	for _, name := range names {
		sub := name
		if sub == "" {
			sub = "sandbox"
		}
		b, err := writeIntermediate(caDir, root, pki.IntermediateOptions{Cluster: sub, KeyType: o.KeyType, Lifetime: o.CALifetime, Now: now})
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}

// caDefaults checks and completes the CA mode options.
func (o *Options) caDefaults() error {
	switch o.CA {
	case "":
		o.CA = CAPlugin
	case CAPlugin, CASelfSigned, CAExpiring:
	default:
		return fmt.Errorf("sandbox: --ca %q: use %s, %s or %s", o.CA, CAPlugin, CASelfSigned, CAExpiring)
	}
	if o.CA != CAExpiring {
		if o.ExpireRoot || o.CALifetime != 0 {
			return fmt.Errorf("sandbox: --ca-lifetime and --expire-root apply to --ca %s only", CAExpiring)
		}
		return nil
	}
	if o.CALifetime == 0 {
		o.CALifetime = DefaultCALifetime
	}
	if o.CALifetime < 30*time.Second {
		return fmt.Errorf("sandbox: --ca-lifetime %s is too short: the sandbox needs about a minute to start (minimum 30s)", o.CALifetime)
	}
	return nil
}
