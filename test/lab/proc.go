package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Proc is a process the lab started inside one of its namespaces. Its
// output goes to a log file under the lab's state directory. The lab owns
// it: Stop or Kill ends it, and the process is killed with the lab's own
// process (Pdeathsig), so a crashed test or CLI leaves no orphan behind.
type Proc struct {
	Name    string
	NetNS   string
	LogPath string
	Argv    []string
	Env     []string

	cmd  *exec.Cmd
	done chan struct{}
	// err is the result of Wait; read it only after done is closed.
	err error
}

// spawnReq asks the launcher thread to start a command.
type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

var (
	launchOnce sync.Once
	launchCh   chan spawnReq
)

// startOnLauncher starts cmd from one OS thread that lives as long as the
// process. Pdeathsig fires when the *thread* that forked a child exits, and
// the Go runtime discards threads that a goroutine locked and never unlocked
// (as netns helpers do when they cannot return to the original namespace);
// forking from a dedicated, permanently locked thread makes Pdeathsig mean
// "the lab process died". The launcher goroutine is owned by the package and
// lives for the life of the process.
func startOnLauncher(cmd *exec.Cmd) error {
	launchOnce.Do(func() {
		launchCh = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread is the children's parent
			for r := range launchCh {
				r.res <- r.cmd.Start()
			}
		}()
	})
	res := make(chan error, 1)
	launchCh <- spawnReq{cmd: cmd, res: res}
	return <-res
}

// startProc starts argv inside the named network namespace (nsenter --net,
// which enters only the network namespace, so bpffs and /sys stay visible).
func startProc(log logrus.FieldLogger, name, netns, logPath string, env []string, argv ...string) (*Proc, error) {
	if netns == "" {
		return nil, fmt.Errorf("start %s: no network namespace (the lab never runs processes in the host namespace)", name)
	}
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer f.Close()
	full := append([]string{"nsenter", "--net=" + NetNSPath(netns), "--"}, argv...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(f, "--- %s lab: start %s in netns %s: %q\n", time.Now().UTC().Format(time.RFC3339Nano), name, netns, argv)
	if err := startOnLauncher(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, NetNS: netns, LogPath: logPath, Argv: argv, Env: env, cmd: cmd, done: make(chan struct{})}
	// The waiter goroutine is owned by p and ends when the process does.
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	log.WithFields(logrus.Fields{"proc": name, "netns": netns, "pid": cmd.Process.Pid}).Debug("process started")
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	if p == nil {
		return false, nil
	}
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs.
// Stopping an exited process is not an error.
func (p *Proc) Stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	if exited, _ := p.Exited(); exited {
		return nil
	}
	if err := syscall.Kill(-p.Pid(), syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	return p.Kill()
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Proc) Kill() error {
	if p == nil {
		return nil
	}
	if exited, _ := p.Exited(); exited {
		return nil
	}
	if err := syscall.Kill(-p.Pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.Name, err)
	}
	<-p.done
	return nil
}
