package lab

import (
	"context"
	"fmt"

	"github.com/podmesh/podmesh/images"
)

// ImageArchive is one container image as a docker-archive the nodes import.
type ImageArchive struct {
	// Name is the image's short name: podmesh-agent,
	// clustermesh-apiserver, pause, echo...
	Name string
	// Ref is the reference the archive holds the image under.
	Ref string
	// Archive is the path of the docker-archive tar.
	Archive string
}

// ImageSet is the images of a real lab.
type ImageSet []ImageArchive

// Ref returns the reference of the named image, or "".
func (s ImageSet) Ref(name string) string {
	for _, im := range s {
		if im.Name == name {
			return im.Ref
		}
	}
	return ""
}

// Archives lists every archive path.
func (s ImageSet) Archives() []string {
	out := make([]string, len(s))
	for k, im := range s {
		out[k] = im.Archive
	}
	return out
}

// BuildImages builds podmesh's images and the lab's (package images:
// static binaries built from the checkout the working directory is in,
// docker-archives in outDir, unchanged ones kept) and returns them.
func BuildImages(ctx context.Context, outDir string) (ImageSet, error) {
	imgs, err := images.Build(ctx, images.Options{OutDir: outDir, GoBuild: true})
	if err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	out := make(ImageSet, len(imgs))
	for k, im := range imgs {
		out[k] = ImageArchive{Name: im.Name, Ref: im.Ref, Archive: im.Archive}
	}
	return out, nil
}
