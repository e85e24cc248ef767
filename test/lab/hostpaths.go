package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// nodeHostDirs are the host paths the kubelet, containerd and the CNI
// plugins use whatever their configuration says (device-plugin socket,
// /var/log/containers links, shim sockets, CNI results). Each real node
// bind-mounts a directory of its own over them inside its private mount
// namespace, so nodes never share them and nothing reaches the host's.
var nodeHostDirs = []string{"/var/lib/kubelet", "/var/log/containers", "/run/containerd", "/var/lib/cni"}

// nodeHostFiles are host files treated the same way: iptables' lock file
// (kube-proxy and the portmap plugin run iptables in each node).
var nodeHostFiles = []string{"/run/xtables.lock"}

// hostPathsRecord, in the state root, lists the mount points that labs
// created on the host because they did not exist; the last lab to go
// removes them.
const hostPathsRecord = ".created-host-paths"

// ensureMountPoints makes sure every per-node mount point exists on the
// host, creating the missing ones (empty directories, an empty lock file)
// and recording them so that Down removes them with the last lab.
func ensureMountPoints(stateRoot string) error {
	var created []string
	for _, d := range nodeHostDirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			// Record the topmost directory that did not exist.
			top := d
			for p := filepath.Dir(d); p != "/"; p = filepath.Dir(p) {
				if _, err := os.Stat(p); err == nil {
					break
				}
				top = p
			}
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("create mount point %s: %w", d, err)
			}
			created = append(created, top)
		}
	}
	for _, f := range nodeHostFiles {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				return fmt.Errorf("create mount point %s: %w", f, err)
			}
			created = append(created, f)
		}
	}
	if len(created) == 0 {
		return nil
	}
	rec := filepath.Join(stateRoot, hostPathsRecord)
	old, _ := os.ReadFile(rec)
	all := strings.Fields(string(old))
	for _, c := range created {
		if !slices.Contains(all, c) {
			all = append(all, c)
		}
	}
	if err := os.MkdirAll(stateRoot, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", stateRoot, err)
	}
	if err := os.WriteFile(rec, []byte(strings.Join(all, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", rec, err)
	}
	return nil
}

// removeCreatedMountPoints removes the host paths labs created, once no lab
// is left under the state root. Directories go only when empty.
func removeCreatedMountPoints(stateRoot string) error {
	ents, err := os.ReadDir(stateRoot)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		if e.IsDir() {
			return nil // another lab still uses them
		}
	}
	rec := filepath.Join(stateRoot, hostPathsRecord)
	data, err := os.ReadFile(rec)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", rec, err)
	}
	var errs []error
	for _, p := range strings.Fields(string(data)) {
		if slices.Contains(nodeHostFiles, p) {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if err := removeEmptyTree(p); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(rec))
	}
	return errors.Join(errs...)
}

// removeEmptyTree removes dir and its subdirectories if they hold no file.
func removeEmptyTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() {
			return fmt.Errorf("leave %s: %s is not empty", dir, e.Name())
		}
		if err := removeEmptyTree(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return os.Remove(dir)
}
