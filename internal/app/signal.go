package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// NotifyContext returns a context cancelled by the first SIGINT or SIGTERM,
// after which meshca finishes or abandons its current step safely (every
// write is guarded and a re-run resumes). The first signal also restores the
// default disposition, so a second SIGINT or SIGTERM always ends the process
// at once, whatever it is blocked on. stop releases the signals.
func NotifyContext(parent context.Context, errOut io.Writer) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			_, _ = fmt.Fprintf(errOut, "\nmeshca: %v: stopping after the current step (a re-run resumes); send it again to exit now\n", sig)
			cancel()
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}
