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
	"text/template"
	"time"

	"github.com/podmesh/podmesh/certs"
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

// overlayTmpl is a cluster's overlay as docs/install.md has a user write
// it: the release's base, the cluster's identity, the images.
var overlayTmpl = template.Must(template.New("overlay").Parse(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - base
images:
  - name: ghcr.io/podmesh/podmesh-agent
    newName: {{.AgentName}}
    newTag: {{.AgentTag}}
  - name: ghcr.io/podmesh/clustermesh-apiserver
    newName: {{.APIServerName}}
    newTag: {{.APIServerTag}}
patches:
  - target:
      kind: ConfigMap
      name: podmesh-config
    patch: |-
      - op: replace
        path: /data
        value:
          cluster-name: {{.Cluster}}
          cluster-id: "{{.ID}}"
          pod-cidrs: {{.PodCIDRs}}
          routing-mode: {{.Mode}}
          tunnel-port: "{{.TunnelPort}}"
          allowed-peers: {{.AllowedPeers}}
`))

// Apply installs the agent of one release and the clustermesh-apiserver
// of another (the same for a plain upgrade) on cluster c — the agent
// DaemonSet from agent's daemonset/, the clustermesh-apiserver Deployment
// from apiserver's — with kubectl apply -k, and waits until both are
// rolled out. dir receives the overlays.
func Apply(ctx context.Context, l *lab.Lab, c *lab.Cluster, agent, apiserver Release, dir string) error {
	var peers []string
	for _, o := range l.Clusters() {
		if o != c {
			peers = append(peers, certs.PeerCN(o.Name))
		}
	}
	var cidrs []string
	for _, p := range c.PodCIDRs {
		cidrs = append(cidrs, p.String())
	}
	base := filepath.Join(dir, c.Name, "base")
	if err := os.RemoveAll(base); err != nil {
		return err
	}
	if err := os.CopyFS(base, os.DirFS(filepath.Join(agent.SrcDir, "daemonset", "base"))); err != nil {
		return fmt.Errorf("copy daemonset/base of %s: %w", agent.Name, err)
	}
	if agent.SrcDir != apiserver.SrcDir {
		// The clustermesh-apiserver's manifests from its own release.
		from := filepath.Join(apiserver.SrcDir, "daemonset", "base")
		ents, err := os.ReadDir(from)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "apiserver-") {
				data, err := os.ReadFile(filepath.Join(from, e.Name()))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(base, e.Name()), data, 0o644); err != nil {
					return err
				}
			}
		}
	}
	split := func(ref string) (string, string) {
		k := strings.LastIndexByte(ref, ':')
		return ref[:k], ref[k+1:]
	}
	d := map[string]string{
		"Cluster": c.Name, "ID": fmt.Sprint(c.ID), "PodCIDRs": strings.Join(cidrs, ","), "Mode": l.RoutingMode(),
		"TunnelPort": fmt.Sprint(lab.TunnelPort), "AllowedPeers": strings.Join(peers, ","),
	}
	d["AgentName"], d["AgentTag"] = split(agent.Agent)
	d["APIServerName"], d["APIServerTag"] = split(apiserver.APIServer)
	var b bytes.Buffer
	if err := overlayTmpl.Execute(&b, d); err != nil {
		return err
	}
	overlay := filepath.Join(dir, c.Name)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), b.Bytes(), 0o644); err != nil {
		return err
	}
	if out, err := l.Kubectl(ctx, c, "apply", "-k", overlay); err != nil {
		return fmt.Errorf("cluster %s: kubectl apply -k (agent %s, clustermesh-apiserver %s): %w: %s", c.Name, agent.Name, apiserver.Name, err, out)
	}
	return l.WaitPodmeshRolledOut(ctx, c, 3*time.Minute)
}
