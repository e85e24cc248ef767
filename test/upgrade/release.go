package upgrade

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/podmesh/podmesh/test/lab"
)

// Release is one podmesh version as a cluster runs it: the daemonset/ of
// its source tree and its agent and clustermesh-apiserver images.
type Release struct {
	// Name says which version it is (a tag, or "current").
	Name string
	// SrcDir is the version's source tree (its daemonset/ is applied).
	SrcDir string
	// Agent and APIServer are the image references.
	Agent, APIServer string
}

// BuildTagged extracts the tree of tag from the git repository repoDir
// (git archive, no worktree) into workDir/src and builds the release's
// images there with that tree's own images package (its `make images`),
// tagged with the tag, into workDir/images. It returns the release and
// the archives of its agent and clustermesh-apiserver images, which every
// node of a lab must import.
func BuildTagged(ctx context.Context, repoDir, tag, workDir string) (Release, lab.ImageSet, error) {
	src := filepath.Join(workDir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return Release{}, nil, err
	}
	archive := exec.CommandContext(ctx, "git", "-C", repoDir, "archive", "--format=tar", tag)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return Release{}, nil, err
	}
	untar.Stdin = pipe
	var stderr bytes.Buffer
	archive.Stderr, untar.Stderr = &stderr, &stderr
	if err := untar.Start(); err != nil {
		return Release{}, nil, fmt.Errorf("tar: %w", err)
	}
	if err := archive.Run(); err != nil {
		_ = untar.Wait()
		return Release{}, nil, fmt.Errorf("git archive %s: %w: %s", tag, err, stderr.Bytes())
	}
	if err := untar.Wait(); err != nil {
		return Release{}, nil, fmt.Errorf("extract %s: %w: %s", tag, err, stderr.Bytes())
	}
	out := filepath.Join(workDir, "images")
	build := exec.CommandContext(ctx, "go", "run", "./images/cmd/podmesh-images", "--out", out, "--bin", "", "--tag", tag)
	build.Dir = src
	stderr.Reset()
	build.Stderr = &stderr
	stdout, err := build.Output()
	if err != nil {
		return Release{}, nil, fmt.Errorf("build the images of %s: %w: %s", tag, err, stderr.Bytes())
	}
	// One line per image: reference, archive, size.
	var set lab.ImageSet
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f[1]), ".tar")
		if name == "podmesh-agent" || name == "clustermesh-apiserver" {
			set = append(set, lab.ImageArchive{Name: name, Ref: f[0], Archive: f[1]})
		}
	}
	r := Release{Name: tag, SrcDir: src, Agent: set.Ref("podmesh-agent"), APIServer: set.Ref("clustermesh-apiserver")}
	if r.Agent == "" || r.APIServer == "" {
		return Release{}, nil, fmt.Errorf("the images of %s: no agent or clustermesh-apiserver in %q", tag, stdout)
	}
	return r, set, nil
}

// Apply installs the agent of one release and the clustermesh-apiserver
// of another (the same for a plain upgrade) on cluster c — the agent
// DaemonSet from agent's daemonset/, the clustermesh-apiserver Deployment
// (its apiserver-*.yaml) from apiserver's — with the cluster's overlay and
// kubectl apply -k, and waits until both are rolled out. dir receives the
// merged manifests.
func Apply(ctx context.Context, l *lab.Lab, c *lab.Cluster, agent, apiserver Release, dir string) error {
	base := filepath.Join(dir, c.Name+"-base")
	if err := os.RemoveAll(base); err != nil {
		return err
	}
	if err := os.CopyFS(base, os.DirFS(filepath.Join(agent.SrcDir, "daemonset", "base"))); err != nil {
		return fmt.Errorf("copy daemonset/base of %s: %w", agent.Name, err)
	}
	if agent.SrcDir != apiserver.SrcDir {
		from := filepath.Join(apiserver.SrcDir, "daemonset", "base")
		ents, err := os.ReadDir(from)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "apiserver-") {
				continue
			}
			data, err := os.ReadFile(filepath.Join(from, e.Name()))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(base, e.Name()), data, 0o644); err != nil {
				return err
			}
		}
	}
	return l.ApplyPodmeshRelease(ctx, c, base, agent.Agent, apiserver.APIServer)
}
