package daemonset

import (
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
)

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs resolves $(VAR) in a container's args the way the kubelet does,
// from the ConfigMap and the downward API (the node is "node-1").
func expandArgs(t *testing.T, c corev1.Container, cm *corev1.ConfigMap) []string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			require.Equal(t, cm.Name, e.ValueFrom.ConfigMapKeyRef.Name)
			v, ok := cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
			require.True(t, ok, "env %s: ConfigMap %s has no key %s", e.Name, cm.Name, e.ValueFrom.ConfigMapKeyRef.Key)
			env[e.Name] = v
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = map[string]string{"spec.nodeName": "node-1", "metadata.namespace": "podmesh-system", "metadata.name": "pod-1"}[e.ValueFrom.FieldRef.FieldPath]
			require.NotEmpty(t, env[e.Name], "env %s: unexpected field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
		default:
			env[e.Name] = e.Value
		}
	}
	out := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		out = append(out, varRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := varRef.FindStringSubmatch(ref)[1]
			v, ok := env[name]
			require.True(t, ok, "arg %q references $(%s), which is not in the container's env", a, name)
			return v
		}))
	}
	return out
}

// TestClusterMeshAPIServerAcceptsOverlayArgs feeds the args an overlay's pod
// would get, after the kubelet's $(VAR) expansion, to the real flag parser
// of clustermesh-apiserver.
func TestClusterMeshAPIServerAcceptsOverlayArgs(t *testing.T) {
	for _, tc := range []struct {
		dir     string
		wantErr string
	}{
		{"overlays/east", ""},
		{"overlays/west", ""},
		{"overlays/south", ""},
		// The base is not a cluster: it has no identity and no peer yet.
		{"base", "--allowed-peers: required"},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			objs := render(t, tc.dir)
			cm := typed[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "podmesh-config"))
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", "clustermesh-apiserver"))
			args := expandArgs(t, d.Spec.Template.Spec.Containers[0], cm)
			cfg, err := server.ParseFlags(args, io.Discard)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, cm.Data["cluster-name"], cfg.ClusterName)
			require.Equal(t, strings.Split(cm.Data["allowed-peers"], ","), cfg.AllowedPeers)
			require.Equal(t, "/var/lib/podmesh/clustermesh", cfg.ClusterMeshConfig, "the importer reads the agents' Secret")
			require.Equal(t, "podmesh-system", cfg.LeaderElectionNamespace)
			require.Equal(t, "pod-1", cfg.LeaderElectionID)
		})
	}
}

// TestAgentArgsExpand checks that every $(VAR) in the agent's args has a
// source, so the kubelet never passes a literal "$(CLUSTER_NAME)".
func TestAgentArgsExpand(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			cm := typed[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "podmesh-config"))
			ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", "podmesh-agent"))
			args := expandArgs(t, ds.Spec.Template.Spec.Containers[0], cm)
			require.Contains(t, args, "--node-name=node-1")
			require.Contains(t, args, "--cluster-name="+cm.Data["cluster-name"])
			for _, a := range args {
				require.NotRegexp(t, varRef, a)
			}
		})
	}
}
