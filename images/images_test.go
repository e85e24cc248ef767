package images

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// fakeTool is a static binary that prints a CoreDNS-style version for
// -version and otherwise exits; it stands in for every binary, so the
// tests build one tiny program instead of podmesh's.
const fakeTool = `package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-version" {
		fmt.Println("CoreDNS-1.14.7")
		fmt.Println("linux/amd64, go, fake")
	}
}
`

var (
	fakeOnce sync.Once
	fakePath string
	fakeErr  error
)

// fakeBinary builds fakeTool once per test binary with goBuildStatic.
func fakeBinary(t *testing.T) string {
	t.Helper()
	fakeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "podmesh-images-fake-")
		if err != nil {
			fakeErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module fake\n\ngo 1.26\n"), 0o644); err != nil {
			fakeErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(fakeTool), 0o644); err != nil {
			fakeErr = err
			return
		}
		fakePath = filepath.Join(dir, "fake")
		fakeErr = goBuildStatic(context.Background(), dir, ".", fakePath)
	})
	require.NoError(t, fakeErr)
	return fakePath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fakePath != "" {
		os.RemoveAll(filepath.Dir(fakePath))
	}
	os.Exit(code)
}

// binDir returns a directory holding every spec's binary: the fake tool,
// with content distinct per file (an appended trailer keeps it a valid ELF).
func binDir(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(fakeBinary(t))
	require.NoError(t, err)
	dir := t.TempDir()
	for _, s := range Specs(DefaultTag) {
		content := append(append([]byte{}, data...), s.File...)
		require.NoError(t, os.WriteFile(filepath.Join(dir, s.File), content, 0o755))
	}
	return dir
}

func buildFromBinDir(t *testing.T, bin, out string) []Image {
	t.Helper()
	imgs, err := Build(t.Context(), Options{OutDir: out, BinDir: bin})
	require.NoError(t, err)
	return imgs
}

// load reads the image back from its archive, by its reference.
func load(t *testing.T, img Image) v1.Image {
	t.Helper()
	tag, err := name.NewTag(img.Ref)
	require.NoError(t, err)
	i, err := tarball.ImageFromPath(img.Archive, &tag)
	require.NoError(t, err)
	return i
}

func specOf(t *testing.T, imageName string) Spec {
	t.Helper()
	for _, s := range Specs(DefaultTag) {
		if s.Name == imageName {
			return s
		}
	}
	t.Fatalf("no spec %s", imageName)
	return Spec{}
}

func TestBuildWritesOneDockerArchivePerImageUnderItsReference(t *testing.T) {
	out := t.TempDir()
	imgs := buildFromBinDir(t, binDir(t), out)
	var refs []string
	for _, img := range imgs {
		refs = append(refs, img.Ref)
		require.Equal(t, filepath.Join(out, img.Name+".tar"), img.Archive)
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(img.Archive) })
		require.NoError(t, err)
		require.Len(t, m, 1, "one image per archive")
		require.Equal(t, []string{img.Ref}, m[0].RepoTags, "the tag ctr and docker import it under")
		require.Len(t, m[0].Layers, 1)
	}
	require.Equal(t, []string{
		"podmesh.local/podmesh-agent:dev",
		"podmesh.local/clustermesh-apiserver:dev",
		"podmesh.local/podmesh-certs:dev",
		"podmesh.local/pause:1",
		"podmesh.local/echo:1",
		"podmesh.local/coredns:1.14.7",
	}, refs)

	imgs, err := Build(t.Context(), Options{OutDir: t.TempDir(), BinDir: binDir(t), Tag: "v0.2.0"})
	require.NoError(t, err)
	require.Equal(t, "podmesh.local/podmesh-agent:v0.2.0", imgs[0].Ref)
	require.Equal(t, "podmesh.local/pause:1", imgs[3].Ref, "the lab images keep their tags")
}

func TestBuildWithoutBinDirSkipsCoreDNS(t *testing.T) {
	// GoBuild off and no bin dir: nothing to take the binaries from.
	_, err := Build(t.Context(), Options{OutDir: t.TempDir()})
	require.ErrorContains(t, err, "no bin directory")
}

func TestImageConfigRunsTheBinaryAsTheManifestUser(t *testing.T) {
	for _, img := range buildFromBinDir(t, binDir(t), t.TempDir()) {
		t.Run(img.Name, func(t *testing.T) {
			s := specOf(t, img.Name)
			cf, err := load(t, img).ConfigFile()
			require.NoError(t, err)
			require.Equal(t, []string{s.Path}, cf.Config.Entrypoint)
			require.Equal(t, s.User, cf.Config.User)
			require.Equal(t, "linux", cf.OS)
			require.Equal(t, runtime.GOARCH, cf.Architecture, "the fake binary is built for the host")
			require.True(t, cf.Created.Time.Equal(epoch), "created %s", cf.Created.Time)
			_, version, _ := strings.Cut(img.Ref, ":")
			require.Equal(t, version, cf.Config.Labels["org.opencontainers.image.version"])
			require.Equal(t, s.Source, cf.Config.Labels["org.opencontainers.image.source"])
			require.NotEmpty(t, s.Source)
		})
	}
}

// TestImageUsersMatchTheWorkloads reads the users the manifests run the
// containers as (daemonset/base) and requires the images to say the same,
// so that runAsNonRoot and the added capabilities behave as the manifests
// expect.
func TestImageUsersMatchTheWorkloads(t *testing.T) {
	base := filepath.Join("..", "daemonset", "base")
	read := func(file string, into any) {
		data, err := os.ReadFile(filepath.Join(base, file))
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(data, into))
	}
	var ds appsv1.DaemonSet
	read("agent-daemonset.yaml", &ds)
	var dep appsv1.Deployment
	read("apiserver-deployment.yaml", &dep)
	for _, c := range []struct {
		image string
		spec  corev1.PodSpec
	}{{"podmesh-agent", ds.Spec.Template.Spec}, {"clustermesh-apiserver", dep.Spec.Template.Spec}} {
		var uid *int64
		if sc := c.spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc := c.spec.Containers[0].SecurityContext; sc != nil && sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		require.NotNil(t, uid, "%s: the manifest sets runAsUser", c.image)
		user, _, _ := strings.Cut(specOf(t, c.image).User, ":")
		require.Equal(t, user, strconv.FormatInt(*uid, 10), "%s image user", c.image)
		image := c.spec.Containers[0].Image
		require.True(t, strings.Contains(image, "/"+c.image+":"), "the manifest runs %s, the image is named %s", image, c.image)
	}
}

// layerEntries returns the image's single layer as a list of tar headers and
// the content of its regular files.
func layerEntries(t *testing.T, img v1.Image) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	var hdrs []*tar.Header
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		hdrs = append(hdrs, h)
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			require.NoError(t, err)
			files[h.Name] = data
		}
	}
	return hdrs, files
}

func TestLayerHoldsOnlyTheBinaryOwnedByRoot(t *testing.T) {
	bin := binDir(t)
	for _, img := range buildFromBinDir(t, bin, t.TempDir()) {
		t.Run(img.Name, func(t *testing.T) {
			s := specOf(t, img.Name)
			hdrs, files := layerEntries(t, load(t, img))
			rel := strings.TrimPrefix(s.Path, "/")
			var names []string
			for _, h := range hdrs {
				names = append(names, h.Name)
				require.Zero(t, h.Uid)
				require.Zero(t, h.Gid)
				require.True(t, h.ModTime.Equal(epoch), "%s mtime %s", h.Name, h.ModTime)
				require.EqualValues(t, 0o755, h.Mode, h.Name)
			}
			want := map[string][]string{
				"/usr/bin/": {"usr/", "usr/bin/", rel},
				"/":         {rel},
			}[strings.TrimSuffix(s.Path, filepath.Base(s.Path))]
			require.NotEmpty(t, want, "a path this test knows: %s", s.Path)
			require.Equal(t, want, names, "parent directories, then the binary")
			data, err := os.ReadFile(filepath.Join(bin, s.File))
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, files[rel]), "the layer holds the binary unchanged")
		})
	}
}

func TestCoreDNSMayBindPort53AsNonRoot(t *testing.T) {
	img := buildFromBinDir(t, binDir(t), t.TempDir())[5]
	require.Equal(t, "coredns", img.Name)
	hdrs, _ := layerEntries(t, load(t, img))
	h := hdrs[len(hdrs)-1]
	raw, ok := h.PAXRecords["SCHILY.xattr.security.capability"]
	require.True(t, ok, "the binary carries a file capability")
	require.Len(t, raw, 20, "vfs_cap_data revision 2")
	b := []byte(raw)
	require.Equal(t, uint32(0x02000001), binary.LittleEndian.Uint32(b[0:]), "revision 2, effective")
	require.Equal(t, uint32(1<<10), binary.LittleEndian.Uint32(b[4:]), "permitted: CAP_NET_BIND_SERVICE only")
	require.Zero(t, binary.LittleEndian.Uint32(b[8:]), "inheritable: none")
	require.Zero(t, binary.LittleEndian.Uint32(b[12:]))
}

func digests(t *testing.T, imgs []Image) map[string]v1.Hash {
	t.Helper()
	d := map[string]v1.Hash{}
	for _, img := range imgs {
		h, err := load(t, img).Digest()
		require.NoError(t, err)
		d[img.Name] = h
	}
	return d
}

func TestUnchangedBinariesGiveTheSameDigest(t *testing.T) {
	bin := binDir(t)
	first := digests(t, buildFromBinDir(t, bin, t.TempDir()))
	second := digests(t, buildFromBinDir(t, bin, t.TempDir()))
	require.Equal(t, first, second, "two builds into fresh directories")

	f, err := os.OpenFile(filepath.Join(bin, "podmesh-echo"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("changed")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	third := digests(t, buildFromBinDir(t, bin, t.TempDir()))
	require.NotEqual(t, first["echo"], third["echo"], "a changed binary changes its image")
	delete(first, "echo")
	delete(third, "echo")
	require.Equal(t, first, third, "and no other image")
}

func TestBuildRewritesOnlyArchivesWhoseInputsChanged(t *testing.T) {
	bin, out := binDir(t), t.TempDir()
	stat := func() map[string]os.FileInfo {
		m := map[string]os.FileInfo{}
		for _, img := range buildFromBinDir(t, bin, out) {
			fi, err := os.Stat(img.Archive)
			require.NoError(t, err)
			m[img.Name] = fi
		}
		return m
	}
	before := stat()
	f, err := os.OpenFile(filepath.Join(bin, "podmesh-pause"), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString("changed")
	require.NoError(t, err)
	require.NoError(t, f.Close())
	after := stat()
	for n := range before {
		// Archives are replaced by rename, so a rewritten one is a new file.
		require.Equal(t, n != "pause", os.SameFile(before[n], after[n]), "%s kept", n)
	}
	// A retag is a change of inputs too.
	imgs, err := Build(t.Context(), Options{OutDir: out, BinDir: bin, Tag: "other"})
	require.NoError(t, err)
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(imgs[0].Archive) })
	require.NoError(t, err)
	require.Equal(t, []string{"podmesh.local/podmesh-agent:other"}, m[0].RepoTags)
}

func TestDynamicallyLinkedBinariesAreRejected(t *testing.T) {
	bin := binDir(t)
	dynamic := ""
	for _, p := range []string{"/bin/true", "/usr/bin/true"} {
		if _, err := staticELFArch(p); errors.Is(err, errNotStatic) {
			dynamic = p
			break
		}
	}
	if dynamic == "" {
		t.Skip("no dynamically linked /bin/true on this host to test with")
	}
	data, err := os.ReadFile(dynamic)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(bin, "podmesh-agent"), data, 0o755))
	_, err = Build(t.Context(), Options{OutDir: t.TempDir(), BinDir: bin})
	require.ErrorIs(t, err, errNotStatic)
}
