package images

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec is the recipe of one image: one static binary and its config.
type Spec struct {
	Name string // image name under Registry
	// Tag of the reference; "" for a tool whose version the binary reports
	// (Build asks it with -version).
	Tag string
	// Package is the Go package of the binary in the podmesh module, built
	// with GoBuild; "" for a tool taken from Options.BinDir.
	Package string
	File    string // file name of the binary in the bin directory
	Path    string // absolute path of the binary in the image
	User    string // numeric uid:gid
	// Caps are file capabilities (security.capability, permitted and
	// effective) on the binary, by capability number.
	Caps         []int
	Cmd          []string // default arguments after the entrypoint
	ExposedPorts []string // "53/udp"
	Source       string   // the org.opencontainers.image.source label
	Description  string
}

// Ref is the full reference of the image.
func (s Spec) Ref() string { return Registry + "/" + s.Name + ":" + s.Tag }

const (
	podmeshSource = "https://github.com/podmesh/podmesh"
	capNetBind    = 10 // CAP_NET_BIND_SERVICE
	nonRoot       = "65532:65532"
)

// Specs returns the images Build writes, podmesh's own ones tagged tag.
func Specs(tag string) []Spec {
	return []Spec{{
		Name: "podmesh-agent", Tag: tag, Package: "github.com/podmesh/podmesh/agent",
		File: "podmesh-agent", Path: "/usr/bin/podmesh-agent",
		// Root: the capabilities the DaemonSet adds (NET_ADMIN, BPF,
		// PERFMON) survive exec only for uid 0.
		User: "0:0", Source: podmeshSource,
		Description: "podmesh node agent: routes, tunnel and eBPF maps towards remote clusters",
	}, {
		Name: "clustermesh-apiserver", Tag: tag, Package: "github.com/podmesh/podmesh/clustermesh-apiserver",
		File: "clustermesh-apiserver", Path: "/usr/bin/clustermesh-apiserver",
		User: nonRoot, ExposedPorts: []string{"2379/tcp", "9880/tcp"}, Source: podmeshSource,
		Description: "podmesh clustermesh-apiserver: the cluster's state for remote agents, over etcd's API",
	}, {
		Name: "podmesh-certs", Tag: tag, Package: "github.com/podmesh/podmesh/certs/cmd/podmesh-certs",
		File: "podmesh-certs", Path: "/usr/bin/podmesh-certs",
		User: nonRoot, Source: podmeshSource,
		Description: "podmesh-certs: the certificates and Secrets of a podmesh mesh",
	}, {
		Name: "pause", Tag: "1", Package: "github.com/podmesh/podmesh/test/pause",
		File: "podmesh-pause", Path: "/pause",
		User: "65535:65535", Source: podmeshSource,
		Description: "the podmesh lab's pod sandbox",
	}, {
		Name: "echo", Tag: "1", Package: "github.com/podmesh/podmesh/test/echo/cmd/echo",
		File: "podmesh-echo", Path: "/usr/bin/podmesh-echo",
		User: nonRoot, ExposedPorts: []string{"7777/tcp", "7778/udp"}, Source: podmeshSource,
		Description: "the podmesh lab's echo-the-peer server",
	}, {
		// As upstream's image: /coredns, non-root, allowed to bind port 53
		// by a file capability (cap_net_bind_service=+ep). Under
		// allowPrivilegeEscalation: false the kernel grants a file
		// capability only if the container already holds it, so a manifest
		// that drops ALL must add NET_BIND_SERVICE back, as upstream's does.
		Name: "coredns", File: "coredns", Path: "/coredns",
		User: nonRoot, Caps: []int{capNetBind}, ExposedPorts: []string{"53/tcp", "53/udp"},
		Source:      "https://github.com/coredns/coredns",
		Description: "CoreDNS built by podmesh's test/tools",
	}}
}

// epoch is every timestamp in the images, so equal inputs give equal digests.
var epoch = time.Unix(0, 0).UTC()

// image assembles the image from the binary's content.
func (s Spec) image(binary []byte, arch string) (v1.Image, error) {
	layerTar, err := s.layer(binary)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "podmesh images: " + s.Path,
			Comment:   s.Description,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = arch, "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = s.config()
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// config is the runtime configuration of the image.
func (s Spec) config() v1.Config {
	c := v1.Config{
		Entrypoint: []string{s.Path},
		Cmd:        s.Cmd,
		User:       s.User,
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":       s.Name,
			"org.opencontainers.image.version":     s.Tag,
			"org.opencontainers.image.source":      s.Source,
			"org.opencontainers.image.description": s.Description,
		},
	}
	if len(s.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range s.ExposedPorts {
			c.ExposedPorts[p] = struct{}{}
		}
	}
	return c
}

// layer is the uncompressed layer: the binary's parent directories and the
// binary, owned by root, stamped with epoch.
func (s Spec) layer(binary []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rel := strings.TrimPrefix(path.Clean(s.Path), "/")
	dirs := strings.Split(path.Dir(rel), "/")
	for i := range dirs {
		if dirs[i] == "." {
			break
		}
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir, Name: strings.Join(dirs[:i+1], "/") + "/",
			Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX,
		}); err != nil {
			return nil, fmt.Errorf("layer: %w", err)
		}
	}
	h := &tar.Header{
		Typeflag: tar.TypeReg, Name: rel, Size: int64(len(binary)),
		Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX,
	}
	if len(s.Caps) > 0 {
		h.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(fileCaps(s.Caps))}
	}
	if err := tw.WriteHeader(h); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// fileCaps encodes a security.capability xattr (struct vfs_cap_data,
// revision 2) granting caps as permitted and effective.
func fileCaps(caps []int) []byte {
	const (
		revision2 = 0x02000000
		effective = 0x000001
	)
	var permitted [2]uint32
	for _, c := range caps {
		permitted[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], revision2|effective)
	binary.LittleEndian.PutUint32(b[4:], permitted[0]) // inheritable[0] stays 0
	binary.LittleEndian.PutUint32(b[12:], permitted[1])
	return b
}
