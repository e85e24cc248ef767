package lab

import (
	"context"
	"os"
	"path/filepath"
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

// BuildImages — TEMPORARY until package images lands: the archives
// podmesh-images wrote into dir.
func BuildImages(ctx context.Context, dir string) (ImageSet, error) {
	refs := map[string]string{"podmesh-agent": "podmesh.local/podmesh-agent:dev", "clustermesh-apiserver": "podmesh.local/clustermesh-apiserver:dev",
		"pause": "podmesh.local/pause:1", "echo": "podmesh.local/echo:1"}
	var out ImageSet
	for name, ref := range refs {
		p := filepath.Join(dir, name+".tar")
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
		out = append(out, ImageArchive{Name: name, Ref: ref, Archive: p})
	}
	return out, nil
}
