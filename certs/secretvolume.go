package certs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Names the kubelet uses inside a Secret volume. The visible files are
// symlinks through DataDirName, which points at a hidden timestamped
// directory; an update builds a new timestamped directory and swaps the
// DataDirName symlink with one rename, so a reader never sees a mix of old
// and new files.
const (
	DataDirName    = "..data"
	dataDirTmpName = "..data_tmp"
	// SecretVolumeFileMode is the mode of the files in a Secret volume the
	// helpers write; the DaemonSet mounts the clustermesh Secret with the same
	// defaultMode.
	SecretVolumeFileMode fs.FileMode = 0o400
)

// secretKeyRE is what the Kubernetes API accepts as a Secret data key.
var secretKeyRE = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

// ValidateSecretKey reports whether name can be a key of a Secret and thus a
// file name in a Secret volume.
func ValidateSecretKey(name string) error {
	switch {
	case len(name) == 0:
		return errors.New("empty secret key")
	case len(name) > 253:
		return fmt.Errorf("secret key %q: longer than 253 characters", name)
	case !secretKeyRE.MatchString(name):
		return fmt.Errorf("secret key %q: only letters, digits, '-', '_' and '.' are allowed", name)
	case name == "." || name == ".." || strings.HasPrefix(name, ".."):
		return fmt.Errorf("secret key %q: must not start with '..'", name)
	}
	return nil
}

// WriteSecretVolume lays files out in dir exactly as the kubelet lays out a
// Secret volume, so tests and the lab exercise the same paths a real pod sees:
//
//	dir/..2026_11_21_23_40_05.123456789/<key>   the files (mode 0400)
//	dir/..data -> ..2026_11_21_23_40_05.123456789
//	dir/<key>  -> ..data/<key>
//
// Calling it again on the same dir is an update with the kubelet's atomic
// swap: the new files go into a new timestamped directory, a "..data_tmp"
// symlink to it is renamed over "..data", visible symlinks for new keys are
// added, those of removed keys are deleted, and the old timestamped directory
// is removed. A reader that opens "<key>" sees either the old or the new
// content, never a mix. dir is created if missing. Files in dir that the
// helper did not create are left alone; a key that collides with such a file
// is an error. Only one writer per dir at a time.
func WriteSecretVolume(dir string, files map[string][]byte) (err error) {
	for key := range files {
		if err := ValidateSecretKey(key); err != nil {
			return fmt.Errorf("secret volume %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("secret volume %s: create directory: %w", dir, err)
	}
	// A visible name must be ours (a symlink into ..data) or absent.
	for key := range files {
		path := filepath.Join(dir, key)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("secret volume %s: %w", dir, err)
		}
		if !ownedLink(path, fi, key) {
			return fmt.Errorf("secret volume %s: %s exists and is not a secret volume link", dir, path)
		}
	}

	oldTS, err := currentTimestampDir(dir)
	if err != nil {
		return err
	}
	tsName := time.Now().UTC().Format("..2006_01_02_15_04_05.")
	tsDir, err := os.MkdirTemp(dir, tsName)
	if err != nil {
		return fmt.Errorf("secret volume %s: create timestamp directory: %w", dir, err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tsDir)
		}
	}()
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return fmt.Errorf("secret volume %s: chmod %s: %w", dir, tsDir, err)
	}
	for key, data := range files {
		path := filepath.Join(tsDir, key)
		if err := os.WriteFile(path, data, SecretVolumeFileMode); err != nil {
			return fmt.Errorf("secret volume %s: write %s: %w", dir, path, err)
		}
		// WriteFile honours the umask; the mode must be exact.
		if err := os.Chmod(path, SecretVolumeFileMode); err != nil {
			return fmt.Errorf("secret volume %s: chmod %s: %w", dir, path, err)
		}
	}

	tmpLink := filepath.Join(dir, dataDirTmpName)
	if err := os.Remove(tmpLink); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("secret volume %s: remove stale %s: %w", dir, tmpLink, err)
	}
	if err := os.Symlink(filepath.Base(tsDir), tmpLink); err != nil {
		return fmt.Errorf("secret volume %s: symlink %s: %w", dir, tmpLink, err)
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, DataDirName)); err != nil {
		_ = os.Remove(tmpLink)
		return fmt.Errorf("secret volume %s: swap %s: %w", dir, DataDirName, err)
	}
	// From here on the new content is live; failures below leave a usable
	// volume, so do not remove tsDir any more.
	var errs []error
	for key := range files {
		path := filepath.Join(dir, key)
		if _, err := os.Lstat(path); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(DataDirName, key), path); err != nil {
			errs = append(errs, fmt.Errorf("secret volume %s: symlink %s: %w", dir, path, err))
		}
	}
	if oldTS != "" {
		stale, err := staleLinks(dir, files)
		if err != nil {
			errs = append(errs, err)
		}
		for _, path := range stale {
			if err := os.Remove(path); err != nil {
				errs = append(errs, fmt.Errorf("secret volume %s: remove %s: %w", dir, path, err))
			}
		}
		if err := os.RemoveAll(filepath.Join(dir, oldTS)); err != nil {
			errs = append(errs, fmt.Errorf("secret volume %s: remove old %s: %w", dir, oldTS, err))
		}
	}
	if len(errs) > 0 {
		// The new content is live; report, but callers must not clean up.
		return errors.Join(errs...)
	}
	return nil
}

// currentTimestampDir returns the directory ..data points at, or "".
func currentTimestampDir(dir string) (string, error) {
	target, err := os.Readlink(filepath.Join(dir, DataDirName))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("secret volume %s: read %s: %w", dir, DataDirName, err)
	}
	if strings.Contains(target, "/") || !strings.HasPrefix(target, "..") {
		return "", fmt.Errorf("secret volume %s: %s points at %q, not a timestamp directory", dir, DataDirName, target)
	}
	return target, nil
}

// ownedLink reports whether path is the visible symlink of key.
func ownedLink(path string, fi fs.FileInfo, key string) bool {
	if fi.Mode()&fs.ModeSymlink == 0 {
		return false
	}
	target, err := os.Readlink(path)
	return err == nil && target == filepath.Join(DataDirName, key)
}

// staleLinks lists visible symlinks of keys that are not in files any more.
func staleLinks(dir string, files map[string][]byte) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("secret volume %s: list: %w", dir, err)
	}
	var stale []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") {
			continue
		}
		if _, keep := files[name]; keep {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Lstat(path)
		if err != nil {
			continue
		}
		if ownedLink(path, fi, name) {
			stale = append(stale, path)
		}
	}
	sort.Strings(stale)
	return stale, nil
}
