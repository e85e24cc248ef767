package daemonset

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	podimages "github.com/podmesh/podmesh/images"
)

// image describes one binary: its Dockerfile and where the manifests run it.
type image struct {
	dockerfile string // relative to the repository root
	kind, name string // the workload that runs it
}

var images = []image{
	{"agent/Dockerfile", "DaemonSet", "podmesh-agent"},
	{"clustermesh-apiserver/Dockerfile", "Deployment", "clustermesh-apiserver"},
}

// dockerfile is what the tests need to know about a Dockerfile.
type dockerfile struct {
	buildPkg   string // the package of the `go build` line, e.g. ./agent
	cgoOff     bool   // CGO_ENABLED=0 on the build line
	finalFrom  string // the base image of the last stage
	stages     int
	finalUser  string // USER of the last stage, "" when unset
	entrypoint string
}

var goBuildPkg = regexp.MustCompile(`go build .*\s(\./\S+)\s*$`)

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	// Join continuation lines so a RUN is one logical line.
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	var d dockerfile
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			d.stages++
			fields := strings.Fields(rest)
			for _, f := range fields {
				if !strings.HasPrefix(f, "--") {
					d.finalFrom = f
					break
				}
			}
			d.finalUser = ""
		case "USER":
			d.finalUser = strings.TrimSpace(rest)
		case "ENTRYPOINT":
			d.entrypoint = strings.TrimSpace(rest)
		case "RUN":
			if m := goBuildPkg.FindStringSubmatch(rest); m != nil {
				d.buildPkg = m[1]
				d.cgoOff = strings.Contains(rest, "CGO_ENABLED=0")
			}
		}
	}
	require.NoError(t, sc.Err())
	return d
}

// imageSpec is the recipe package images builds the named image from.
func imageSpec(t *testing.T, name string) podimages.Spec {
	t.Helper()
	for _, s := range podimages.Specs(podimages.DefaultTag) {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("package images builds no image %s", name)
	return podimages.Spec{}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	return filepath.Dir(here(t))
}

// TestDockerfiles checks what can be checked without a container engine
// (there is none on the build machine): multi-stage, static build of an
// existing main package, an empty (scratch) final stage with the entrypoint
// and user of the image `make images` builds, and a user that matches the
// workload's securityContext.
func TestDockerfiles(t *testing.T) {
	objs := render(t, "base")
	for _, img := range images {
		t.Run(img.dockerfile, func(t *testing.T) {
			d := parseDockerfile(t, filepath.Join(repoRoot(t), img.dockerfile))
			require.GreaterOrEqual(t, d.stages, 2, "multi-stage")
			require.NotEmpty(t, d.buildPkg, "a go build line")
			require.True(t, d.cgoOff, "CGO_ENABLED=0: a static binary for an empty base")
			require.Equal(t, "scratch", d.finalFrom, "final stage: nothing but the binary, as `make images` builds it")
			require.Equal(t, "./"+filepath.Dir(img.dockerfile), d.buildPkg, "builds the binary of its directory")
			// The image `make images` builds (package images) and this
			// Dockerfile's agree on what runs and as whom.
			recipe := imageSpec(t, img.name)
			require.Equal(t, `["`+recipe.Path+`"]`, d.entrypoint, "entrypoint as in package images")
			require.Equal(t, recipe.User, d.finalUser, "user as in package images")
			require.Equal(t, "github.com/podmesh/podmesh/"+strings.TrimPrefix(d.buildPkg, "./"), recipe.Package)

			var spec corev1.PodSpec
			switch img.kind {
			case "DaemonSet":
				spec = typed[appsv1.DaemonSet](t, find(t, objs, img.kind, img.name)).Spec.Template.Spec
			case "Deployment":
				spec = typed[appsv1.Deployment](t, find(t, objs, img.kind, img.name)).Spec.Template.Spec
			}
			uid := ""
			if sc := spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
				uid = strconv.FormatInt(*sc.RunAsUser, 10)
			}
			if sc := spec.Containers[0].SecurityContext; sc != nil && sc.RunAsUser != nil {
				uid = strconv.FormatInt(*sc.RunAsUser, 10)
			}
			user, _, _ := strings.Cut(d.finalUser, ":")
			require.Equal(t, uid, user, "image USER and the workload's runAsUser agree")
			if img.kind == "Deployment" {
				require.NotEqual(t, "0", user, "the clustermesh-apiserver runs as non-root")
			}
		})
	}
}

// TestBinariesBuildStaticAndAcceptManifestFlags builds each image's binary
// the way its Dockerfile does (CGO_ENABLED=0), checks the result is static,
// and checks that every flag the manifests pass exists in the binary's -h.
func TestBinariesBuildStaticAndAcceptManifestFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries; skipped in -short mode")
	}
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command is needed to build the binaries")
	objs := render(t, "base")
	for _, img := range images {
		t.Run(img.dockerfile, func(t *testing.T) {
			d := parseDockerfile(t, filepath.Join(repoRoot(t), img.dockerfile))
			list := exec.Command(goBin, "list", "-f", "{{.Name}}", d.buildPkg)
			list.Dir = repoRoot(t)
			out, err := list.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "main" {
				t.Skipf("%s has no main package yet (go list: %s); the image cannot be built until it lands",
					d.buildPkg, strings.TrimSpace(string(out)))
			}
			bin := filepath.Join(t.TempDir(), filepath.Base(d.buildPkg))
			build := exec.Command(goBin, "build", "-trimpath", "-o", bin, d.buildPkg)
			build.Dir = repoRoot(t)
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
			out, err = build.CombinedOutput()
			require.NoError(t, err, "CGO_ENABLED=0 go build %s:\n%s", d.buildPkg, out)
			requireStatic(t, bin)

			var args []string
			switch img.kind {
			case "DaemonSet":
				args = typed[appsv1.DaemonSet](t, find(t, objs, img.kind, img.name)).Spec.Template.Spec.Containers[0].Args
			case "Deployment":
				args = typed[appsv1.Deployment](t, find(t, objs, img.kind, img.name)).Spec.Template.Spec.Containers[0].Args
			}
			known := binaryFlags(t, bin)
			for _, a := range args {
				name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				require.True(t, known[name], "%s %s passes --%s, which %s -h does not list (it lists %v)",
					img.kind, img.name, name, filepath.Base(bin), keysOf(known))
			}
			if img.kind == "DaemonSet" {
				// docs/install.md runs `kubectl exec ds/podmesh-agent --
				// podmesh-agent status` without flags: the status command's
				// default address must be where the DaemonSet serves.
				var out bytes.Buffer
				cmd := exec.Command(bin, "status", "-h")
				cmd.Stdout, cmd.Stderr = &out, &out
				_ = cmd.Run() // -h exits non-zero with some flag setups
				m := regexp.MustCompile(`-status-listen string\s+.*\(default "([^"]+)"\)`).FindStringSubmatch(out.String())
				require.NotNil(t, m, "podmesh-agent status -h shows no --status-listen default:\n%s", out.String())
				require.Contains(t, args, "--status-listen="+m[1])
			}
		})
	}
}

// requireStatic fails unless the ELF file has no dynamic loader.
func requireStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	require.NoError(t, err)
	defer f.Close()
	for _, p := range f.Progs {
		require.NotEqual(t, elf.PT_INTERP, p.Type, "%s needs a dynamic loader", path)
	}
	libs, err := f.ImportedLibraries()
	require.NoError(t, err)
	require.Empty(t, libs, "%s links shared libraries", path)
}

var flagLine = regexp.MustCompile(`^\s+--?([a-z0-9][a-z0-9-]*)`)

// binaryFlags runs bin -h and collects the flag names it prints.
func binaryFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	cmd := exec.Command(bin, "-h")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		require.NoError(t, err)
	}
	known := map[string]bool{}
	for _, line := range strings.Split(out.String(), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			known[m[1]] = true
		}
	}
	require.NotEmpty(t, known, "%s -h lists no flags:\n%s", bin, out.String())
	return known
}

func keysOf(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
