package verify

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/internal/kube"
	"github.com/meshca/meshca/internal/mesh"
)

// LiveOptions tunes Live.
type LiveOptions struct {
	Options
	// Port is the proxies' admin port (15000 when 0); Attempts the tries per
	// proxy (kube.Fetcher's default when 0).
	Port, Attempts int
	// Namespace is the Istio namespace; empty: discovered.
	Namespace string
}

// Live verifies the fleet of a live cluster: it discovers the mesh, reads
// every proxy through a port-forward to its admin port, and checks the
// istio-ca-root-cert ConfigMaps — everything `meshca verify` and the
// rotation engine's phase gates need.
func Live(ctx context.Context, client *kube.Client, exp Expectation, opts LiveOptions) (*Report, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	// Each read issues a request or two; Parallel already bounds how many
	// are in flight, and client-go's token bucket would only serialise the
	// walk, so it is disabled (negative QPS).
	cfg := rest.CopyConfig(client.Config)
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	f := kube.NewFetcher(client)
	f.Clientset, f.Config = cs, cfg
	if opts.Port != 0 {
		f.Port = opts.Port
	}
	if opts.Attempts != 0 {
		f.Attempts = opts.Attempts
	}
	if opts.Timeout != 0 {
		f.Timeout = min(opts.Timeout, kube.DefaultTimeout)
	}
	in, err := mesh.Discover(ctx, client.Clientset, mesh.Options{Namespace: opts.Namespace})
	if err != nil {
		return nil, err
	}
	warnings := in.Warnings
	cms, cmErr := mesh.ReadRootConfigMaps(ctx, client.Clientset)
	if cmErr != nil {
		warnings = append(warnings, fmt.Sprintf("istio-ca-root-cert ConfigMaps not checked: %v", cmErr))
	}
	discovery := now().Sub(start)
	rep, err := Fleet(ctx, in.Proxies, func(ctx context.Context, p *mesh.Proxy) ([]byte, error) {
		return f.Get(ctx, p.Namespace, p.Name, DumpPath(p.Kind))
	}, exp, opts.Options)
	if rep != nil {
		rep.Time = start.UTC()
		rep.Walk.Discovery = discovery
		rep.Warnings = warnings
		if cmErr == nil {
			rep.RootConfigMaps = ConfigMaps(cms, exp)
		}
	}
	return rep, err
}
