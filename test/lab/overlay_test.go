package lab

import (
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// TestOverlayKeepsTheManifestsReplicasUnlessOverridden renders the overlay
// the lab installs: the clustermesh-apiserver runs the replicas
// daemonset/base says, or Options.APIServerReplicas when set.
func TestOverlayKeepsTheManifestsReplicasUnlessOverridden(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Join(filepath.Dir(file), "..", "..")
	for _, tc := range []struct {
		override int
		want     int32
	}{{0, 2}, {1, 1}} {
		l := &Lab{StateDir: t.TempDir(), opts: Options{
			RepoDir: repo, RoutingMode: ModeEBPF, APIServerReplicas: tc.override,
			Images: ImageSet{{Name: "podmesh-agent", Ref: "lab/podmesh-agent:dev"}, {Name: "clustermesh-apiserver", Ref: "lab/clustermesh-apiserver:dev"}},
		}}
		c := &Cluster{lab: l, Index: 1, Name: "c1", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
		l.clusters = map[int]*Cluster{1: c}
		dir, err := l.writeOverlay(c)
		require.NoError(t, err)
		res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		require.NoError(t, err)
		var found bool
		for _, r := range res.Resources() {
			if r.GetKind() != "Deployment" || r.GetName() != APIServerDeployment {
				continue
			}
			data, err := r.AsYAML()
			require.NoError(t, err)
			var d appsv1.Deployment
			require.NoError(t, yaml.Unmarshal(data, &d))
			require.Equal(t, tc.want, *d.Spec.Replicas, "override %d", tc.override)
			require.Equal(t, "lab/clustermesh-apiserver:dev", d.Spec.Template.Spec.Containers[0].Image)
			found = true
		}
		require.True(t, found)
	}
}
