package lab

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
