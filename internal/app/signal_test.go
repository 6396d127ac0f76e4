package app_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/app"
)

// TestHelperBlockedProcess is not a test: run by TestSecondSignalAlwaysEnds
// as a subprocess, it takes the signals as meshca's main does and then
// blocks forever without looking at its context — the worst case of a step
// that does not honour cancellation.
func TestHelperBlockedProcess(t *testing.T) {
	if os.Getenv("MESHCA_SIGNAL_HELPER") != "1" {
		t.Skip("helper process for TestSecondSignalAlwaysEnds")
	}
	ctx, stop := app.NotifyContext(context.Background(), os.Stderr)
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("cancelled")
	select {} // ignores everything from here on
}

func TestSecondSignalAlwaysEnds(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBlockedProcess$")
			cmd.Env = append(os.Environ(), "MESHCA_SIGNAL_HELPER=1")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(out)
			expect := func(want string) {
				t.Helper()
				if !lines.Scan() || lines.Text() != want {
					t.Fatalf("helper said %q, want %q (stderr %s)", lines.Text(), want, stderr.String())
				}
			}
			expect("ready")
			_ = cmd.Process.Signal(sig)
			expect("cancelled") // the first signal cancels the context only
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			_ = cmd.Process.Signal(sig)
			start := time.Now()
			select {
			case err := <-exited:
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("helper ended with %v, want death by %v", err, sig)
				}
				ws, _ := ee.Sys().(syscall.WaitStatus)
				if !ws.Signaled() || ws.Signal() != sig {
					t.Errorf("helper ended with %v, want death by %v", ee, sig)
				}
				t.Logf("second %v ended the blocked process in %v", sig, time.Since(start))
			case <-time.After(30 * time.Second): // hang guard, not a performance bound
				_ = cmd.Process.Kill()
				t.Fatalf("a second %v did not end the process", sig)
			}
			if !strings.Contains(stderr.String(), "send it again to exit now") {
				t.Errorf("stderr %q: the first signal should say how to exit at once", stderr.String())
			}
		})
	}
}
