package kube

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// FetchFlags are the flags of every command that reads a proxy's admin API:
// --port, --timeout, --attempts.
type FetchFlags struct {
	Port     int
	Timeout  time.Duration
	Attempts int
}

// AddFlags registers the flags; what names the proxy ("ztunnel", "envoy").
func (f *FetchFlags) AddFlags(fs *pflag.FlagSet, what string) {
	fs.IntVar(&f.Port, "port", AdminPort, what+" admin port in the pod")
	fs.DurationVar(&f.Timeout, "timeout", DefaultTimeout, "timeout of each attempt to read a pod")
	fs.IntVar(&f.Attempts, "attempts", DefaultAttempts, "attempts for transient failures")
}

// Validate checks the values.
func (f *FetchFlags) Validate() error {
	switch {
	case f.Port <= 0 || f.Port > 65535:
		return fmt.Errorf("--port %d: not a port number", f.Port)
	case f.Timeout <= 0:
		return errors.New("--timeout must be positive")
	case f.Attempts < 1:
		return errors.New("--attempts must be at least 1")
	}
	return nil
}

// Apply sets the fetcher's port, timeout and attempts.
func (f *FetchFlags) Apply(fetcher *Fetcher) {
	fetcher.Port, fetcher.Timeout, fetcher.Attempts = f.Port, f.Timeout, f.Attempts
}
