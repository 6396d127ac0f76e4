package main

import (
	"context"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The xDS types envoy subscribes to first, and counts updates of.
const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

// runADS holds the ADS stream to the agent's xDS proxy (the xds-grpc pipe)
// for as long as ctx lives, re-opening it after errors as envoy does. Over it
// the agent connects upstream to istiod, which is how istiod's pushes,
// PCDS included, reach the agent at all.
func (s *stub) runADS(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		err := s.adsOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("ads stream to the agent ended; reconnecting", "err", err, "retryIn", backoff.String())
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *stub) adsOnce(ctx context.Context) error {
	conn, err := grpc.NewClient("unix:"+s.boot.xdsPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.boot.xdsAPI == "DELTA_GRPC" {
		return s.delta(ctx, client)
	}
	return s.sotw(ctx, client)
}

// counted records an accepted CDS or LDS update.
func (s *stub) counted(typeURL string) {
	switch typeURL {
	case clusterType:
		s.cdsSuccess.Add(1)
	case listenerType:
		s.ldsSuccess.Add(1)
	}
}

// sotw: wildcard CDS, then LDS once the first CDS arrived; every response
// is ACKed with its version and nonce.
func (s *stub) sotw(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) error {
	st, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: s.boot.node, TypeUrl: clusterType}); err != nil {
		return err
	}
	s.log.Info("ads stream opened (state of the world)")
	ldsSent := false
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		s.counted(resp.GetTypeUrl())
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		if resp.GetTypeUrl() == clusterType && !ldsSent {
			ldsSent = true
			if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType}); err != nil {
				return err
			}
		}
	}
}

// delta: the same subscriptions over the incremental protocol (waypoints
// always use it).
func (s *stub) delta(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) error {
	st, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: s.boot.node, TypeUrl: clusterType}); err != nil {
		return err
	}
	s.log.Info("ads stream opened (delta)")
	ldsSent := false
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		s.counted(resp.GetTypeUrl())
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		if resp.GetTypeUrl() == clusterType && !ldsSent {
			ldsSent = true
			if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: listenerType}); err != nil {
				return err
			}
		}
	}
}
