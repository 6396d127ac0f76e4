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

// Source is a cluster to verify: its API, and a way to read one proxy's
// admin dump. LiveSource reads them through port-forwards; tests provide
// their own.
type Source struct {
	Clientset kubernetes.Interface
	Fetch     Fetch
	// Namespace is the Istio namespace; "" discovers it.
	Namespace string
}

// LiveOptions tunes LiveSource.
type LiveOptions struct {
	// Port is the proxies' admin port; Attempts the tries per proxy;
	// Timeout each attempt's limit (kube.Fetcher's defaults when 0).
	Port, Attempts int
	Timeout        time.Duration
	// Namespace is the Istio namespace; "" discovers it.
	Namespace string
}

// LiveSource reads proxies through client-go port-forwards to their admin
// port.
func LiveSource(client *kube.Client, opts LiveOptions) (Source, error) {
	// Each read issues a request or two; the walk's Parallel already bounds
	// how many are in flight, and client-go's token bucket would only
	// serialise it, so it is disabled (negative QPS).
	cfg := rest.CopyConfig(client.Config)
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return Source{}, fmt.Errorf("create kubernetes client: %w", err)
	}
	f := kube.NewFetcher(client)
	f.Clientset, f.Config = cs, cfg
	// Run reads only the pods discovery has just listed as running.
	f.SkipPodCheck = true
	if opts.Port != 0 {
		f.Port = opts.Port
	}
	if opts.Attempts != 0 {
		f.Attempts = opts.Attempts
	}
	if opts.Timeout != 0 {
		f.Timeout = min(opts.Timeout, kube.DefaultTimeout)
	}
	return Source{
		Clientset: client.Clientset,
		Namespace: opts.Namespace,
		Fetch: func(ctx context.Context, p *mesh.Proxy) ([]byte, error) {
			return f.Get(ctx, p.Namespace, p.Name, DumpPath(p.Kind))
		},
	}, nil
}

// Expect returns the expectation for the Istio install found in namespace.
type Expect func(ctx context.Context, namespace string) (Expectation, error)

// Run verifies a cluster's fleet: it discovers the mesh, takes the
// expectation for its namespace, reads every proxy (Fleet) and checks the
// istio-ca-root-cert ConfigMaps. It is `meshca verify` and the rotation
// engine's phase gate. The report is returned with Fleet's error, if any.
func Run(ctx context.Context, src Source, expect Expect, opts Options) (*Report, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	in, err := mesh.Discover(ctx, src.Clientset, mesh.Options{Namespace: src.Namespace})
	if err != nil {
		return nil, err
	}
	exp, err := expect(ctx, in.Namespace)
	if err != nil {
		return nil, err
	}
	warnings := in.Warnings
	cms, cmErr := mesh.ReadRootConfigMaps(ctx, src.Clientset)
	if cmErr != nil {
		warnings = append(warnings, fmt.Sprintf("istio-ca-root-cert ConfigMaps not checked: %v", cmErr))
	}
	discovery := now().Sub(start)
	rep, err := Fleet(ctx, in.Proxies, src.Fetch, exp, opts)
	rep.Time = start.UTC()
	rep.Walk.Discovery = discovery
	rep.Warnings = warnings
	if cmErr == nil {
		rep.RootConfigMaps = ConfigMaps(cms, exp)
	}
	return rep, err
}

// Live verifies a live cluster against exp through port-forwards.
func Live(ctx context.Context, client *kube.Client, exp Expectation, opts LiveOptions) (*Report, error) {
	src, err := LiveSource(client, opts)
	if err != nil {
		return nil, err
	}
	return Run(ctx, src, func(context.Context, string) (Expectation, error) { return exp, nil }, Options{})
}
