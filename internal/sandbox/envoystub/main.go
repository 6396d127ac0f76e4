// Command envoystub stands in for Envoy behind the real pilot-agent in the
// meshca sandbox (design.md §5). pilot-agent starts it as its envoy binary
// (proxy config binaryPath) with envoy's own command line. It does only what
// Envoy does with what the agent gives it:
//   - reads the bootstrap the agent rendered (-c): node, admin address, the
//     sds-grpc and xds-grpc pipes;
//   - fetches secrets "default" and "ROOTCA" over SDS from the agent's socket;
//   - holds an ADS stream to the agent's xDS proxy, so istiod's pushes
//     (PCDS included) flow through the real agent, and counts the CDS/LDS
//     updates it accepts;
//   - serves the probe's mTLS handshakes on the pod port the sandbox gives
//     it (env MESHCA_ENVOYSTUB_INBOUND): it presents "default" and
//     verifies clients against "ROOTCA", exactly as SDS last gave them, and
//     writes why it refused a handshake or ended a connection to its event
//     log (MESHCA_ENVOYSTUB_EVENTS), where the probe reads it;
//   - answers the admin API the agent and meshca use: /config_dump (the
//     SecretsConfigDump the readers parse), /ready, /stats (the readiness
//     stats the agent polls), /drain_listeners and /quitquitquit.
//
// It never decides trust: it holds no certificate the agent did not serve.
// It is a simulated stand-in, and says so in its logs and /server_info.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// label is how the stand-in names itself wherever it is shown.
const label = "envoy (simulated stand-in, meshca envoystub)"

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "envoystub")
	if err := run(log, os.Args[1:]); err != nil {
		log.Error("envoy stand-in failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, args []string) error {
	dieWithParent()
	cfgPath := configPath(args)
	if cfgPath == "" {
		return errors.New("no bootstrap: envoy is started with -c <bootstrap>")
	}
	boot, err := readBootstrap(cfgPath)
	if err != nil {
		return err
	}
	log.Info("starting "+label, "bootstrap", cfgPath, "node", boot.node.GetId(), "admin", boot.adminAddr, "sds", boot.sdsPath, "xds", boot.xdsPath, "xdsAPI", boot.xdsAPI)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s := newStub(boot, log)
	if err := s.start(ctx); err != nil {
		return err
	}
	reason := s.name() + " exited"
	select {
	case <-ctx.Done():
		log.Info("envoy stand-in: signal received, exiting")
		reason += " on a signal"
	case <-s.quit:
		log.Info("envoy stand-in: /quitquitquit, exiting")
		reason += " on /quitquitquit"
	}
	s.close(reason)
	return nil
}

// configPath finds envoy's -c / --config-path among the agent's arguments;
// every other flag of envoy's command line is accepted and ignored.
func configPath(args []string) string {
	for i, a := range args {
		switch a {
		case "-c", "--config-path":
			if i+1 < len(args) {
				return args[i+1]
			}
		}
	}
	return ""
}

// bootstrap is what the stand-in reads from the agent's bootstrap.
type bootstrap struct {
	node      *corev3.Node
	adminAddr string
	// statsAddr is the prometheus stats listener; empty when the bootstrap
	// has none.
	statsAddr string
	sdsPath   string
	xdsPath   string
	// xdsAPI is ads_config.api_type: GRPC or DELTA_GRPC.
	xdsAPI string
}

func readBootstrap(path string) (*bootstrap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bootstrap: %w", err)
	}
	var raw struct {
		Node struct {
			ID       string         `json:"id"`
			Cluster  string         `json:"cluster"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
		Admin struct {
			Address struct {
				SocketAddress struct {
					Address   string `json:"address"`
					PortValue int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
		} `json:"admin"`
		DynamicResources struct {
			ADSConfig struct {
				APIType string `json:"api_type"`
			} `json:"ads_config"`
		} `json:"dynamic_resources"`
		StaticResources struct {
			Listeners []json.RawMessage `json:"listeners"`
			Clusters  []struct {
				Name           string `json:"name"`
				LoadAssignment struct {
					Endpoints []struct {
						LBEndpoints []struct {
							Endpoint struct {
								Address struct {
									Pipe struct {
										Path string `json:"path"`
									} `json:"pipe"`
								} `json:"address"`
							} `json:"endpoint"`
						} `json:"lb_endpoints"`
					} `json:"endpoints"`
				} `json:"load_assignment"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse bootstrap %s: %w", path, err)
	}
	md, err := structpb.NewStruct(raw.Node.Metadata)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: node metadata: %w", path, err)
	}
	b := &bootstrap{
		node:   &corev3.Node{Id: raw.Node.ID, Cluster: raw.Node.Cluster, Metadata: md},
		xdsAPI: raw.DynamicResources.ADSConfig.APIType,
	}
	sa := raw.Admin.Address.SocketAddress
	if sa.PortValue == 0 {
		return nil, fmt.Errorf("bootstrap %s: no admin socket_address", path)
	}
	host := sa.Address
	if host == "" {
		host = "127.0.0.1"
	}
	b.adminAddr = fmt.Sprintf("%s:%d", host, sa.PortValue)
	for _, c := range raw.StaticResources.Clusters {
		for _, e := range c.LoadAssignment.Endpoints {
			for _, le := range e.LBEndpoints {
				switch c.Name {
				case "sds-grpc":
					b.sdsPath = le.Endpoint.Address.Pipe.Path
				case "xds-grpc":
					b.xdsPath = le.Endpoint.Address.Pipe.Path
				}
			}
		}
	}
	// The listener istio's bootstrap routes to its prometheus_stats cluster
	// (envoy's admin /stats/prometheus) on ENVOY_PROMETHEUS_PORT: the port
	// pilot-agent scrapes to merge envoy's stats into its own.
	for _, l := range raw.StaticResources.Listeners {
		if !bytes.Contains(l, []byte(`"prometheus_stats"`)) {
			continue
		}
		var addr struct {
			Address struct {
				SocketAddress struct {
					PortValue int `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
		}
		if err := json.Unmarshal(l, &addr); err == nil && addr.Address.SocketAddress.PortValue != 0 {
			b.statsAddr = fmt.Sprintf("127.0.0.1:%d", addr.Address.SocketAddress.PortValue)
		}
	}
	if b.sdsPath == "" || b.xdsPath == "" {
		return nil, fmt.Errorf("bootstrap %s: clusters sds-grpc and xds-grpc with a pipe address are required", path)
	}
	return b, nil
}

// now is the stand-in's clock.
var now = time.Now
