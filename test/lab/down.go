package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Leftovers is what discovery finds of one lab: by its prefix and its state
// directory, never by a broader pattern.
type Leftovers struct {
	// Owner is the live process that owns the lab (0 when none).
	Owner int
	// NetNS are the lab's named namespaces.
	NetNS []string
	// Procs are processes running inside those namespaces.
	Procs []int
	// BPFDirs are bpffs directories /sys/fs/bpf/<prefix>-<role>.
	BPFDirs []string
	// Mounts are mount points under the state directory (the lab's bpffs).
	Mounts []string
	// StateDir is the state directory when it exists.
	StateDir string
	// Files are the CLI's log files <state root>/<prefix>.*.log.
	Files []string
	// Cgroups are the lab's cgroup directories (real nodes), in every
	// hierarchy.
	Cgroups []string
}

// Empty reports whether nothing of the lab is left.
func (lo Leftovers) Empty() bool {
	return lo.Owner == 0 && len(lo.NetNS) == 0 && len(lo.Procs) == 0 && len(lo.BPFDirs) == 0 &&
		len(lo.Mounts) == 0 && lo.StateDir == "" && len(lo.Files) == 0 && len(lo.Cgroups) == 0
}

func (lo Leftovers) String() string {
	var parts []string
	if lo.Owner != 0 {
		parts = append(parts, fmt.Sprintf("owner pid %d", lo.Owner))
	}
	if n := len(lo.NetNS); n > 0 {
		parts = append(parts, fmt.Sprintf("%d netns", n))
	}
	if n := len(lo.Procs); n > 0 {
		parts = append(parts, fmt.Sprintf("%d processes", n))
	}
	if n := len(lo.BPFDirs); n > 0 {
		parts = append(parts, fmt.Sprintf("%d bpffs dirs", n))
	}
	if n := len(lo.Mounts); n > 0 {
		parts = append(parts, fmt.Sprintf("%d mounts", n))
	}
	if lo.StateDir != "" {
		parts = append(parts, "state dir "+lo.StateDir)
	}
	if n := len(lo.Cgroups); n > 0 {
		parts = append(parts, fmt.Sprintf("%d cgroups", n))
	}
	if n := len(lo.Files); n > 0 {
		parts = append(parts, fmt.Sprintf("%d log files", n))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// Discover finds what is left of the lab with this prefix.
func Discover(prefix, stateRoot string) (Leftovers, error) {
	var lo Leftovers
	if err := ValidatePrefix(prefix); err != nil {
		return lo, err
	}
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	names := Names{Prefix: prefix}
	var errs []error
	stateDir := filepath.Join(stateRoot, prefix)
	if _, err := os.Stat(stateDir); err == nil {
		lo.StateDir = stateDir
		if st, err := ReadState(stateDir); err == nil && st.OwnerAlive() && st.OwnerPID != os.Getpid() {
			lo.Owner = st.OwnerPID
		}
	}
	all, err := listNetNS()
	errs = append(errs, err)
	inodes := map[uint64]bool{}
	for _, n := range all {
		if !names.Owns(n) {
			continue
		}
		lo.NetNS = append(lo.NetNS, n)
		var st unix.Stat_t
		if err := unix.Stat(NetNSPath(n), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	if len(inodes) > 0 {
		procs, err := procsInNetNS(inodes)
		errs = append(errs, err)
		lo.Procs = procs
	}
	// Containers of real nodes run in pod namespaces the lab did not name;
	// they are found by the lab's cgroups.
	cgProcs, err := cgroupProcs(prefix)
	errs = append(errs, err)
	for _, pid := range cgProcs {
		if !slices.Contains(lo.Procs, pid) {
			lo.Procs = append(lo.Procs, pid)
		}
	}
	cgDirs, err := labCgroupDirs(prefix)
	errs = append(errs, err)
	lo.Cgroups = cgDirs
	if ents, err := os.ReadDir("/sys/fs/bpf"); err == nil {
		for _, e := range ents {
			if names.Owns(e.Name()) {
				lo.BPFDirs = append(lo.BPFDirs, filepath.Join("/sys/fs/bpf", e.Name()))
			}
		}
	}
	mounts, err := mountsUnder(stateDir)
	errs = append(errs, err)
	lo.Mounts = mounts
	for _, f := range []string{prefix + ".lab.log", prefix + ".supervisor.log"} {
		if _, err := os.Lstat(filepath.Join(stateRoot, f)); err == nil {
			lo.Files = append(lo.Files, filepath.Join(stateRoot, f))
		}
	}
	return lo, errors.Join(errs...)
}

// procsInNetNS lists processes whose network namespace is one of inodes
// (nsfs inode numbers of the lab's namespaces).
func procsInNetNS(inodes map[uint64]bool) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/"+e.Name()+"/ns/net", &st); err != nil {
			continue // gone, or a kernel thread
		}
		if inodes[st.Ino] {
			out = append(out, pid)
		}
	}
	return out, nil
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(a, b int) bool { return len(out[a]) > len(out[b]) })
	return out, sc.Err()
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// Down removes everything of the lab with this prefix: it asks a live owner
// (a CLI supervisor) to tear down and waits for it, kills processes still
// running inside the lab's namespaces, deletes the namespaces, the bpffs
// directories and mounts, and the state directory. Objects are found by the
// prefix's closed name grammar and the state directory only; nothing else
// on the machine is touched. Down of a lab that does not exist succeeds.
func Down(prefix, stateRoot string, log logrus.FieldLogger) error {
	if stateRoot == "" {
		stateRoot = DefaultStateRoot
	}
	if log == nil {
		nl := logrus.New()
		nl.Out = io.Discard
		log = nl
	}
	lo, err := Discover(prefix, stateRoot)
	if err != nil && lo.Empty() {
		return err
	}
	var errs []error
	if lo.Owner != 0 {
		log.WithField("pid", lo.Owner).Info("asking the lab owner to tear down")
		if err := syscall.Kill(lo.Owner, syscall.SIGTERM); err == nil {
			waitGone(lo.Owner, 90*time.Second)
		}
		if lo, err = Discover(prefix, stateRoot); err != nil {
			errs = append(errs, err)
		}
	}
	// Processes in the lab's namespaces: ask, then insist.
	for _, pid := range lo.Procs {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	for _, pid := range lo.Procs {
		if !waitGone(pid, 5*time.Second) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
	if len(lo.Cgroups) > 0 {
		if err := removeCgroups(prefix); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range lo.NetNS {
		if err := delNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range lo.BPFDirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	for _, m := range lo.Mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if lo.StateDir != "" {
		if err := os.RemoveAll(lo.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("remove state dir: %w", err))
		}
	}
	for _, f := range lo.Files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", f, err))
		}
	}
	// The state root is shared by labs; it goes when the last one does,
	// with the mount points labs had to create on the host.
	if err := removeCreatedMountPoints(stateRoot); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(stateRoot)
	if left, _ := Discover(prefix, stateRoot); !left.Empty() {
		errs = append(errs, fmt.Errorf("lab %s: still left after down: %s", prefix, left))
	}
	return errors.Join(errs...)
}

// waitGone waits until pid has exited (or is a zombie), up to timeout.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if !alive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-t.C
	}
}

func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

// StaleLabs lists the labs under stateRoot whose owner process is dead
// (a crashed or killed test run), for sweeping.
func StaleLabs(stateRoot string) ([]string, error) {
	ents, err := os.ReadDir(stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", stateRoot, err)
	}
	var out []string
	for _, e := range ents {
		if ValidatePrefix(e.Name()) != nil {
			continue
		}
		st, err := ReadState(filepath.Join(stateRoot, e.Name()))
		if err != nil || st.OwnerAlive() {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}
