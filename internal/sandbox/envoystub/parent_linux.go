package main

import "syscall"

// dieWithParent asks Linux to kill the stand-in when pilot-agent dies, so a
// sandbox killed outright leaves no orphan behind (the agent's own process
// group is stopped as a whole otherwise).
func dieWithParent() {
	const prSetPdeathsig = 1
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetPdeathsig, uintptr(syscall.SIGKILL), 0)
}
