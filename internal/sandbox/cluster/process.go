package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PIDFile is the file under Config.Dir that lists the running components, one
// "<name> <pid> <executable>" line each; StopDir reads it.
const PIDFile = "pids"

// logTailLines is how much of a failing component's log goes into an error.
const logTailLines = 25

// ProcessSpec describes a child process to start with StartProcess.
type ProcessSpec struct {
	// Name identifies the process in errors (and in the pid file of a Cluster).
	Name string
	// Exe is the path of the executable.
	Exe string
	// Args are the arguments, without the executable.
	Args []string
	// Env is added to this process's environment ("KEY=value").
	Env []string
	// Dir is the working directory; empty means the current one.
	Dir string
	// LogPath receives stdout and stderr (truncated at start).
	LogPath string
	// Detach lets the process outlive this one; by default (Linux) it gets
	// SIGKILL when the starting process dies.
	Detach bool
}

// Process is a child process in its own process group, started by
// StartProcess, with its output in a log file. The package waits for it in
// the background, so it never lingers as a zombie.
type Process struct {
	name    string
	exe     string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process has been waited for
	waitErr error         // valid after done

	mu      sync.Mutex // serialises Stop
	stopped bool       // set by the first Stop
}

// StartProcess starts spec.Exe in its own process group with its output in
// spec.LogPath (the command line is its first line). The control-plane
// components run this way; so can other sandbox processes (istiod).
func StartProcess(spec ProcessSpec) (*Process, error) {
	logFile, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log for %s: %w", spec.Name, err)
	}
	fmt.Fprintf(logFile, "# %s %s\n", spec.Exe, strings.Join(spec.Args, " "))
	cmd := exec.Command(spec.Exe, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(spec.Detach)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (%s): %w", spec.Name, spec.Exe, err)
	}
	p := &Process{name: spec.Name, exe: spec.Exe, cmd: cmd, logPath: spec.LogPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited (and been reaped).
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns how the process ended; valid once Done is closed (a zero exit
// is reported as the error "exit status 0").
func (p *Process) Err() error {
	if p.waitErr == nil {
		return errors.New("exit status 0")
	}
	return p.waitErr
}

// exited reports whether the process has ended.
func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Terminate sends SIGTERM to the process alone, not its group, as kubelet
// signals a container's main process: what it started (pilot-agent's envoy)
// is its to stop. Follow with Stop to reap it.
func (p *Process) Terminate() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.Pid(), err)
	}
	return nil
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the process; anything else left in its group is killed too. It
// reports a process that had already exited on its own (with its log tail) or
// had to be killed. Calling it again after a Stop returns nil.
func (p *Process) Stop(grace time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited() {
		if p.stopped {
			return nil
		}
		p.stopped = true
		return fmt.Errorf("%s had exited before stop (%w)\n%s", p.name, p.Err(), p.LogTail())
	}
	p.stopped = true
	if err := signalGroup(p.Pid(), syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.Pid(), err)
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	var killed bool
	select {
	case <-p.done:
	case <-timer.C:
		killed = true
		_ = signalGroup(p.Pid(), syscall.SIGKILL)
		<-p.done
	}
	// Anything the process started shares its group: make sure it is gone.
	_ = signalGroup(p.Pid(), syscall.SIGKILL)
	if killed {
		return fmt.Errorf("%s (pid %d) did not stop within %v of SIGTERM; killed", p.name, p.Pid(), grace)
	}
	return nil
}

// LogTail returns the last lines of the process's log under a header line
// naming the file, or "" if the log is empty or unreadable.
func (p *Process) LogTail() string {
	return formatTail(p.logPath)
}

func formatTail(path string) string {
	lines, err := tailFile(path, logTailLines)
	if err != nil || len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("--- last %d lines of %s ---\n%s", len(lines), path, strings.Join(lines, "\n"))
}

// tailFile returns up to n last lines of the file.
func tailFile(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const maxRead = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxRead {
		if _, err := f.Seek(-maxRead, io.SeekEnd); err != nil {
			return nil, err
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}

// pidEntry is one line of the pid file.
type pidEntry struct {
	name string
	pid  int
	exe  string
}

func writePIDFile(dir string, procs []*Process) error {
	var b bytes.Buffer
	for _, p := range procs {
		fmt.Fprintf(&b, "%s %d %s\n", p.name, p.Pid(), p.exe)
	}
	return writeFileAtomic(filepath.Join(dir, PIDFile), b.Bytes(), 0o644)
}

func readPIDFile(dir string) ([]pidEntry, error) {
	path := filepath.Join(dir, PIDFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var entries []pidEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(strings.TrimSpace(sc.Text()), " ", 3)
		if len(fields) != 3 {
			continue
		}
		pid, err := strconv.Atoi(fields[1])
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("pid file %s: bad line %q", path, sc.Text())
		}
		entries = append(entries, pidEntry{name: fields[0], pid: pid, exe: fields[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read pid file %s: %w", path, err)
	}
	return entries, nil
}

// liveEntries returns the entries of the pid file whose process still runs
// the recorded executable.
func liveEntries(dir string) ([]pidEntry, error) {
	entries, err := readPIDFile(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var live []pidEntry
	for _, e := range entries {
		if processRunning(e.pid, e.exe) {
			live = append(live, e)
		}
	}
	return live, nil
}

// StopDir stops the components of a cluster started by another process with
// Config.Dir = dir (the "down" of a detached sandbox): it reads the pid file,
// sends SIGTERM to each component's process group in reverse start order,
// sends SIGKILL to those still running after grace, and removes the pid file.
// A pid whose process no longer runs the recorded executable is skipped, so a
// recycled pid is never signalled. Stopping a cluster that is not running is
// not an error.
func StopDir(dir string, grace time.Duration) error {
	entries, err := liveEntries(dir)
	if err != nil {
		return err
	}
	var errs []error
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if err := signalGroup(e.pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signal %s (pid %d): %w", e.name, e.pid, err))
			continue
		}
		deadline := time.Now().Add(grace)
		for processRunning(e.pid, e.exe) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if processRunning(e.pid, e.exe) {
			_ = signalGroup(e.pid, syscall.SIGKILL)
			for deadline := time.Now().Add(5 * time.Second); processRunning(e.pid, e.exe) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			if processRunning(e.pid, e.exe) {
				errs = append(errs, fmt.Errorf("%s (pid %d) still runs after SIGKILL", e.name, e.pid))
				continue
			}
		}
		_ = signalGroup(e.pid, syscall.SIGKILL) // leftovers in its group
	}
	if len(errs) == 0 {
		if err := os.Remove(filepath.Join(dir, PIDFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pid file: %w", err))
		}
	}
	return errors.Join(errs...)
}
