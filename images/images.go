package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Registry is the registry part of every reference Build writes. Nothing is
// ever pulled from it: the images are imported into the container runtime.
const Registry = "podmesh.local"

// DefaultTag is the tag of podmesh's own images when Options.Tag is empty.
const DefaultTag = "dev"

// Options says where the images go and where their binaries come from.
type Options struct {
	// OutDir receives one <name>.tar docker-archive per image (created if
	// missing).
	OutDir string
	// Tag of the podmesh images (agent, clustermesh-apiserver, certs);
	// DefaultTag when empty. The lab images have fixed tags.
	Tag string
	// GoBuild builds the static binaries itself (CGO_ENABLED=0 go build
	// -trimpath, into OutDir/bin); the working directory must be inside
	// the podmesh module. Without it, the binaries are taken from BinDir
	// under the file names of Specs and must already be static.
	GoBuild bool
	// BinDir holds the tool binaries (coredns, built by
	// test/tools/build.sh). When empty, no CoreDNS image is built.
	BinDir string
}

// Image is one image Build wrote.
type Image struct {
	Name    string // e.g. "podmesh-agent"
	Ref     string // full reference, e.g. "podmesh.local/podmesh-agent:dev"
	Archive string // a docker-archive tar holding the image under Ref
}

// Build writes every image as a docker-archive into o.OutDir and returns
// them in the order of Specs. An archive whose inputs are unchanged is kept
// as it is.
func Build(ctx context.Context, o Options) ([]Image, error) {
	if o.OutDir == "" {
		return nil, errors.New("images: no output directory")
	}
	if o.Tag == "" {
		o.Tag = DefaultTag
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", o.OutDir, err)
	}
	var specs []Spec
	for _, s := range Specs(o.Tag) {
		if s.Package == "" && o.BinDir == "" {
			continue // a tool image without a tool directory
		}
		specs = append(specs, s)
	}
	bins, err := binaries(ctx, o, specs)
	if err != nil {
		return nil, err
	}
	var out []Image
	for i, s := range specs {
		if s.Tag == "" {
			if s.Tag, err = toolVersion(ctx, bins[i]); err != nil {
				return nil, err
			}
		}
		img, err := writeArchive(s, bins[i], o.OutDir)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		out = append(out, img)
	}
	return out, nil
}

// writeArchive writes s with the binary at bin into dir, unless the archive
// there was written from the same inputs.
func writeArchive(s Spec, bin, dir string) (Image, error) {
	ref, err := name.NewTag(s.Ref())
	if err != nil {
		return Image{}, fmt.Errorf("parse reference: %w", err)
	}
	res := Image{Name: s.Name, Ref: ref.String(), Archive: filepath.Join(dir, s.Name+".tar")}
	data, err := os.ReadFile(bin)
	if err != nil {
		return Image{}, fmt.Errorf("read binary: %w", err)
	}
	arch, err := staticELFArch(bin)
	if err != nil {
		return Image{}, err
	}
	key, err := inputsKey(s, arch, data)
	if err != nil {
		return Image{}, err
	}
	keyFile := res.Archive + ".inputs"
	if old, err := os.ReadFile(keyFile); err == nil && string(old) == key {
		if _, err := os.Stat(res.Archive); err == nil {
			return res, nil
		}
	}
	img, err := s.image(data, arch)
	if err != nil {
		return Image{}, err
	}
	tmp := res.Archive + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return Image{}, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, res.Archive); err != nil {
		return Image{}, fmt.Errorf("rename archive: %w", err)
	}
	if err := os.WriteFile(keyFile, []byte(key), 0o644); err != nil {
		return Image{}, fmt.Errorf("record inputs: %w", err)
	}
	return res, nil
}

// recipeVersion changes whenever the way an image is assembled from its Spec
// changes, so that every archive is written again once.
const recipeVersion = 1

// inputsKey identifies everything an archive is made of.
func inputsKey(s Spec, arch string, binary []byte) (string, error) {
	sum := sha256.Sum256(binary)
	j, err := json.Marshal(struct {
		Recipe int
		Spec   Spec
		Arch   string
		Binary string
	}{recipeVersion, s, arch, hex.EncodeToString(sum[:])})
	if err != nil {
		return "", fmt.Errorf("encode inputs: %w", err)
	}
	k := sha256.Sum256(j)
	return hex.EncodeToString(k[:]), nil
}
