package images

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
)

// binaries returns the path of each spec's binary: built into
// OutDir/bin when o.GoBuild and the spec has a package, else in o.BinDir.
func binaries(ctx context.Context, o Options, specs []Spec) ([]string, error) {
	paths := make([]string, len(specs))
	buildDir := filepath.Join(o.OutDir, "bin")
	var build []int
	// Find the given binaries first, so a missing one fails before minutes
	// of building.
	for i, s := range specs {
		if o.GoBuild && s.Package != "" {
			paths[i] = filepath.Join(buildDir, s.File)
			build = append(build, i)
			continue
		}
		if o.BinDir == "" {
			return nil, fmt.Errorf("image %s: no bin directory to take %s from, and GoBuild is off", s.Name, s.File)
		}
		paths[i] = filepath.Join(o.BinDir, s.File)
		if _, err := os.Stat(paths[i]); err != nil {
			hint := "build it with GoBuild"
			if s.Package == "" {
				hint = "`make tools` builds it"
			}
			return nil, fmt.Errorf("image %s: %w (%s)", s.Name, err, hint)
		}
	}
	for _, i := range build {
		if err := goBuildStatic(ctx, "", specs[i].Package, paths[i]); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// goBuildStatic builds pkg, from the module of dir ("" for the working
// directory), into out as a static, stripped, reproducible Linux binary —
// what the Dockerfiles build.
func goBuildStatic(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s (run inside the podmesh module): %w: %s", pkg, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// errNotStatic is returned for a binary that needs a dynamic loader, which
// an image without a base does not have.
var errNotStatic = errors.New("not a static binary")

// staticELFArch checks that path is a static ELF executable and returns its
// architecture as a GOARCH name.
func staticELFArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s: %w (it has a dynamic loader; build it with CGO_ENABLED=0)", path, errNotStatic)
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	default:
		return "", fmt.Errorf("%s: unsupported machine %s", path, f.Machine)
	}
}

var toolVersionRE = regexp.MustCompile(`(?m)^CoreDNS-(\d+\.\d+\.\d+\S*)$`)

// toolVersion asks a tool binary for its version (CoreDNS prints
// "CoreDNS-1.14.7" for -version), the tag of its image.
func toolVersion(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "-version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s -version: %w: %s", bin, err, out)
	}
	m := toolVersionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s -version printed no version: %q", bin, out)
	}
	return string(m[1]), nil
}
