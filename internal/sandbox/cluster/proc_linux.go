//go:build linux

package cluster

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// sysProcAttr puts a child in its own process group and, unless detach, asks
// the kernel to SIGKILL it when the starting process dies, so a crashed or
// timed-out test leaves no control plane behind.
func sysProcAttr(detach bool) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if !detach {
		attr.Pdeathsig = syscall.SIGKILL
	}
	return attr
}

// signalGroup signals the process group led by pid.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}

// processRunning reports whether pid is a live (not zombie) process running
// exe. A zombie counts as gone: once its parent has exited it is reaped late
// by PID 1, and kill -0 would still see it.
func processRunning(pid int, exe string) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may contain spaces.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		if state := stat[i+2]; state == 'Z' || state == 'X' {
			return false
		}
	}
	if exe == "" {
		return true
	}
	link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		// Not ours to inspect (other user): trust the pid file only if the
		// command line names the executable.
		cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		return err == nil && bytes.HasPrefix(cmdline, []byte(exe))
	}
	return strings.TrimSuffix(link, " (deleted)") == exe
}
