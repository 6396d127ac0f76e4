//go:build !unix

package cluster

import (
	"os"
	"syscall"
)

// sysProcAttr has nothing to set outside Unix; the sandbox is not supported there.
func sysProcAttr(bool) *syscall.SysProcAttr { return nil }

// signalGroup kills the process; there are no process groups to signal.
func signalGroup(pid int, _ syscall.Signal) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// processRunning is unknown outside Unix; report not running.
func processRunning(int, string) bool { return false }
