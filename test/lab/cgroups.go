package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CgroupFS is where the host mounts its cgroup hierarchies.
const CgroupFS = "/sys/fs/cgroup"

// CgroupTop is the podmesh-owned cgroup directory under which every lab
// keeps one directory per prefix, and each real node its own below that:
// /sys/fs/cgroup/<controller>/podmesh-lab/<prefix>/<node>.
const CgroupTop = "podmesh-lab"

// cgroupHierarchies lists every mounted hierarchy directory: the v1
// per-controller ones and, in hybrid mode, unified/ (runc and the kubelet
// create cgroups there too).
func cgroupHierarchies() ([]string, error) {
	ents, err := os.ReadDir(CgroupFS)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", CgroupFS, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() || e.Type()&fs.ModeSymlink != 0 {
			p := filepath.Join(CgroupFS, e.Name())
			if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
				out = append(out, p)
			}
		}
	}
	// A pure cgroup v2 host mounts the unified hierarchy on CgroupFS itself.
	if len(out) == 0 {
		if _, err := os.Stat(filepath.Join(CgroupFS, "cgroup.procs")); err == nil {
			out = append(out, CgroupFS)
		}
	}
	return out, nil
}

// cgroupRel is the cgroup path (relative to every hierarchy) of a lab or of
// one of its nodes.
func cgroupRel(prefix string, node ...string) string {
	return filepath.Join(append([]string{CgroupTop, prefix}, node...)...)
}

// makeNodeCgroup creates the node's cgroup root in every v1 hierarchy (the
// kubelet checks it exists in each), copying cpuset.cpus and cpuset.mems down
// from the parent where the cpuset controller needs them.
func makeNodeCgroup(prefix, node string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		if filepath.Base(h) == "unified" || h == CgroupFS {
			continue // cgroup v2: runc and the kubelet create what they need
		}
		parent := h
		for _, part := range strings.Split(cgroupRel(prefix, node), "/") {
			dir := filepath.Join(parent, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					continue // not the cpuset hierarchy
				}
				cur, _ := os.ReadFile(filepath.Join(dir, f))
				if strings.TrimSpace(string(cur)) == "" {
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return fmt.Errorf("write %s/%s: %w", dir, f, err)
					}
				}
			}
			parent = dir
		}
	}
	return nil
}

// labCgroupDirs returns every cgroup directory of the lab (or of one node),
// in every hierarchy, deepest first.
func labCgroupDirs(prefix string, node ...string) ([]string, error) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range hs {
		root := filepath.Join(h, cgroupRel(prefix, node...))
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return fs.SkipDir
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("walk %s: %w", root, err)
		}
	}
	sort.Slice(dirs, func(a, b int) bool { return strings.Count(dirs[a], "/") > strings.Count(dirs[b], "/") })
	return dirs, nil
}

// cgroupProcs lists the processes in the lab's (or a node's) cgroups.
func cgroupProcs(prefix string, node ...string) ([]int, error) {
	dirs, err := labCgroupDirs(prefix, node...)
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var out []int
	for _, d := range dirs {
		f, err := os.Open(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
		f.Close()
	}
	return out, nil
}

// removeCgroups kills every process left in the lab's (or a node's) cgroups
// (containers whose shim is gone) and removes the directories depth-first in
// every hierarchy, then the lab's and the podmesh-lab top directory when
// they are empty.
func removeCgroups(prefix string, node ...string) error {
	pids, err := cgroupProcs(prefix, node...)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		waitGone(pid, 5*time.Second)
	}
	dirs, err := labCgroupDirs(prefix, node...)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range dirs {
		if err := rmdirRetry(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(node) > 0 {
		return errors.Join(errs...)
	}
	hs, _ := cgroupHierarchies()
	for _, h := range hs {
		_ = syscall.Rmdir(filepath.Join(h, CgroupTop)) // shared by labs: only when empty
	}
	return errors.Join(errs...)
}

// rmdirRetry removes a cgroup directory; a cgroup whose last process just
// died can be busy for a moment.
func rmdirRetry(dir string) error {
	var err error
	for range 50 {
		err = syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the kernel frees the cgroup asynchronously; no event to wait on
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}
