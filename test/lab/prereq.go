package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
)

// CNIBinDir is where Debian's containernetworking-plugins puts the plugins.
const CNIBinDir = "/usr/lib/cni"

// kubePrereqs maps what real nodes run to the Debian package providing it.
var kubePrereqs = []struct{ path, pkg string }{
	{"containerd", "containerd"},
	{"ctr", "containerd"},
	{"runc", "runc"},
	{filepath.Join(CNIBinDir, "bridge"), "containernetworking-plugins"},
	{filepath.Join(CNIBinDir, "host-local"), "containernetworking-plugins"},
	{filepath.Join(CNIBinDir, "portmap"), "containernetworking-plugins"},
	{"iptables", "iptables"},
	{"unshare", "util-linux"},
	{"nsenter", "util-linux"},
	{"mount", "mount"},
}

// CheckKubePrerequisites checks what real nodes need on the host (root,
// containerd, runc, the CNI plugins, iptables, util-linux) and installs the
// missing Debian packages with apt-get.
func CheckKubePrerequisites(ctx context.Context, log logrus.FieldLogger) error {
	if os.Geteuid() != 0 {
		return errors.New("real nodes need root (network and mount namespaces, cgroups)")
	}
	missing := missingPrereqs()
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("real nodes need the Debian packages %s (no apt-get here to install them)", strings.Join(missing, " "))
	}
	log.WithField("packages", missing).Info("installing the packages real nodes need")
	for _, argv := range [][]string{{"apt-get", "update", "-qq"}, append([]string{"apt-get", "install", "-y", "-qq"}, missing...)} {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
	}
	if still := missingPrereqs(); len(still) > 0 {
		return fmt.Errorf("real nodes: still missing after apt-get install: %s", strings.Join(still, " "))
	}
	return nil
}

func missingPrereqs() []string {
	var pkgs []string
	for _, p := range kubePrereqs {
		var err error
		if filepath.IsAbs(p.path) {
			_, err = os.Stat(p.path)
		} else {
			_, err = exec.LookPath(p.path)
		}
		if err != nil && !strings.Contains(strings.Join(pkgs, " "), p.pkg) {
			pkgs = append(pkgs, p.pkg)
		}
	}
	return pkgs
}

// Inotify instances the lab's processes hold (measured: a kubelet holds
// about 6, containerd 1, kube-apiserver about 9, the other control-plane
// components and the agents a few): the estimate per real node and per
// cluster, with room to spare.
const (
	inotifyPerNode    = 8
	inotifyPerCluster = 16
)

// InotifyNeeded is how many inotify instances root needs in addition to
// those in use for a real lab of this size.
func InotifyNeeded(clusters, nodes int) int {
	return clusters*nodes*inotifyPerNode + clusters*inotifyPerCluster
}

// CheckInotify fails, naming the exact limit needed, when
// fs.inotify.max_user_instances (a host-wide per-user limit, which the
// lab never raises) cannot hold a real lab of this size next to the inotify
// instances root already holds. Kubelets past the limit die with "inotify_init:
// too many open files".
func CheckInotify(clusters, nodes int) error {
	data, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	if err != nil {
		return fmt.Errorf("read fs.inotify.max_user_instances: %w", err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("parse fs.inotify.max_user_instances: %w", err)
	}
	inUse := inotifyInUse()
	need := inUse + InotifyNeeded(clusters, nodes)
	if need > limit {
		return fmt.Errorf("a lab of %d clusters x %d real nodes needs about %d inotify instances (%d in use by root now + %d), "+
			"but fs.inotify.max_user_instances is %d: run fewer nodes, or raise it yourself (sysctl fs.inotify.max_user_instances=%d); the lab never changes it",
			clusters, nodes, need, inUse, InotifyNeeded(clusters, nodes), limit, need)
	}
	return nil
}

// inotifyInUse counts the inotify instances held by root's processes.
func inotifyInUse() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		var st os.FileInfo
		if st, err = os.Stat(filepath.Join("/proc", e.Name())); err != nil || !ownedByRoot(st) {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name())); err == nil && t == "anon_inode:inotify" {
				n++
			}
		}
	}
	return n
}

func ownedByRoot(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Uid == 0
}
