//go:build unix && !linux

package cluster

import (
	"errors"
	"syscall"
)

// sysProcAttr puts a child in its own process group. Only Linux can kill
// children when their parent dies; elsewhere Stop or StopDir must run.
func sysProcAttr(bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup signals the process group led by pid.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// processRunning reports whether pid exists; without /proc the executable
// cannot be checked.
func processRunning(pid int, _ string) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
