package rotate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/report/htmlreport"
	"github.com/meshca/meshca/internal/rotate"
	"github.com/meshca/meshca/internal/sandbox"
)

// reportTimeout bounds the reads of writeReport (record, backup, fleet).
const reportTimeout = 3 * time.Minute

// NewReportCmd returns `meshca report`.
func NewReportCmd(env *cli.Env) *cobra.Command {
	var out, events string
	cmd := &cobra.Command{
		Use:   "report -o FILE.html [--events events.jsonl]",
		Short: "Write the HTML report of a CA rotation, rebuilt from what the cluster holds",
		Long: `Write one self-contained HTML page (no script, nothing loaded from the
network; readable printed and in dark mode) telling the story of the last CA
rotation of each cluster: the old and new root and signer, the backup Secret,
a timeline of the phases with each cacerts write and proof, the final fleet
and every finding with its fix.

It is rebuilt from the rotation record (ConfigMap meshca-rotation), cacerts,
the backup Secret and a verification of the fleet. The cluster does not keep
the run's events: give the stream saved with meshca rotate -o json >
events.jsonl as --events to add the istiod reloads, the restarts and the
convergence of each proxy kind. meshca rotate --report FILE.html writes the
same report at the end of a run.`,
		Example: `  meshca rotate --root ./new-root --yes -o json > events.jsonl
  meshca report --kubeconfig ~/.kube/config -o rotation.html --events events.jsonl
  meshca report --context east --context west -o rotation.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return cli.Usage("give the report's file with -o FILE.html")
			}
			var b *htmlreport.Builder
			if events != "" {
				data, err := os.ReadFile(events)
				if err != nil {
					return fmt.Errorf("--events: %w", err)
				}
				evs, err := htmlreport.ReadEvents(events, bytes.NewReader(data))
				if err != nil {
					return err
				}
				b = htmlreport.NewBuilder()
				for _, ev := range evs {
					b.Observe(ev)
				}
			}
			cs, err := clusters(env, nil)
			if err != nil {
				return err
			}
			if err := writeReport(cmd.Context(), env, "meshca report", out, cs, b, nil, nil); err != nil {
				return err
			}
			_, _ = fmt.Fprintf(env.Streams.ErrOut, "wrote %s\n", out)
			return nil
		},
	}
	multiContext(cmd)
	cmd.Flags().StringVarP(&out, "output", "o", "", "the HTML file to write")
	cmd.Flags().StringVar(&events, "events", "", "the run's event stream (meshca rotate -o json > FILE) for the restarts, reloads and convergence curves")
	return cmd
}

// writeReport builds the report of clusters — what each holds, the events
// folded in b (nil: none), the probe's samples and why the run failed
// (runErr, nil when it did not) — and writes it to path. It reads even after
// ctx ended (an interrupted run still gets its report).
func writeReport(ctx context.Context, env *cli.Env, by, path string, cs []*rotate.Cluster, b *htmlreport.Builder, probe []htmlreport.ProbeSample, runErr error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportTimeout)
	defer cancel()
	m := &htmlreport.Model{Generated: env.Now().UTC(), By: by, Version: env.Version, Probe: probe}
	if runErr != nil {
		m.RunError = runErr.Error()
	}
	var errs []error
	for _, c := range cs {
		rc, err := htmlreport.Collect(ctx, c)
		if err != nil {
			// Keep what could be read; the error is returned with the
			// report written.
			errs = append(errs, err)
			rc.Findings = append(rc.Findings, htmlreport.Finding{Subject: "cluster " + c.Name, Problem: err.Error(), Fix: "check access to the cluster (meshca check) and write the report again with meshca report"})
		}
		m.Clusters = append(m.Clusters, rc)
	}
	if len(cs) > 0 {
		m.RunBy = htmlreport.WhoAmI(ctx, cs[0].Client)
	}
	if b != nil {
		b.Apply(m)
	}
	htmlreport.Axis(m)
	var buf bytes.Buffer
	if err := htmlreport.Render(&buf, m); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil { //nolint:gosec // the report holds fingerprints, never a key: meant to be shared
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return errors.Join(errs...)
}

// probeSampler reads the sandbox probe's totals every second while a run
// goes on, for the report's handshakes/failures/refused/resets chart. It
// samples the running totals the sandbox serves on loopback (meshca sandbox
// probe); a sample that cannot be read is left out.
type probeSampler struct {
	mu      sync.Mutex
	samples []htmlreport.ProbeSample
	stop    context.CancelFunc
	done    chan struct{}
}

func startProbeSampler(ctx context.Context, dir string, now func() time.Time) *probeSampler {
	ctx, cancel := context.WithCancel(ctx)
	p := &probeSampler{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			p.sample(ctx, dir, now)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func (p *probeSampler) sample(ctx context.Context, dir string, now func() time.Time) {
	snap, err := sandbox.FetchProbe(ctx, dir, false)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.samples = append(p.samples, htmlreport.ProbeSample{Time: now().UTC(), Handshakes: snap.Handshakes, Failures: snap.Failures, Refused: snap.Refused, Resets: snap.Resets})
}

// finish takes a last sample and returns them all.
func (p *probeSampler) finish(ctx context.Context, dir string, now func() time.Time) []htmlreport.ProbeSample {
	p.stop()
	<-p.done
	p.sample(context.WithoutCancel(ctx), dir, now)
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]htmlreport.ProbeSample(nil), p.samples...)
}
