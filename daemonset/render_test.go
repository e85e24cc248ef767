package daemonset

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// kustomizations are the directories a user can apply; each must render.
var kustomizations = []string{"base", "overlays/east", "overlays/west", "overlays/south"}

// here is the directory of this package, whatever the working directory.
func here(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Dir(file)
}

// render runs kustomize (the library kubectl kustomize uses) on dir.
func render(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(here(t), dir))
	require.NoError(t, err, "kustomize build %s", dir)
	var objs []*unstructured.Unstructured
	for _, r := range resMap.Resources() {
		m, err := r.Map()
		require.NoError(t, err)
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	require.NotEmpty(t, objs, "%s renders no objects", dir)
	return objs
}

// find returns the one rendered object of kind and name.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			require.Nil(t, found, "two %s %s", kind, name)
			found = o
		}
	}
	require.NotNil(t, found, "no %s %s", kind, name)
	return found
}

// typed converts u into its client-go type, refusing unknown fields, so a
// typo in the YAML fails here and not silently in a cluster.
func typed[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	require.NoError(t, k8sruntime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true),
		"%s %s", u.GetKind(), u.GetName())
	return out
}

func TestEveryObjectDecodesStrictly(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			for _, u := range render(t, dir) {
				obj, err := scheme.Scheme.New(u.GroupVersionKind())
				require.NoError(t, err, "%s is not a built-in kind", u.GroupVersionKind())
				require.NoError(t, k8sruntime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true),
					"%s %s", u.GetKind(), u.GetName())
				if u.GetKind() != "Namespace" && u.GetKind() != "ClusterRole" && u.GetKind() != "ClusterRoleBinding" {
					require.Equal(t, "podmesh-system", u.GetNamespace(), "%s %s", u.GetKind(), u.GetName())
				}
				require.Equal(t, "podmesh", u.GetLabels()["app.kubernetes.io/part-of"], "%s %s", u.GetKind(), u.GetName())
			}
		})
	}
}

// env returns a map of the container's environment variable sources.
func envSources(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			out[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			out[e.Name] = fmt.Sprintf("configmap:%s/%s", e.ValueFrom.ConfigMapKeyRef.Name, e.ValueFrom.ConfigMapKeyRef.Key)
		default:
			out[e.Name] = "value:" + e.Value
		}
	}
	return out
}

func TestAgentDaemonSet(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			ds := typed[appsv1.DaemonSet](t, find(t, render(t, dir), "DaemonSet", "podmesh-agent"))
			spec := ds.Spec.Template.Spec
			require.True(t, spec.HostNetwork, "the agent programs the host's network namespace")
			require.Equal(t, corev1.DNSClusterFirstWithHostNet, spec.DNSPolicy)
			require.Equal(t, "system-node-critical", spec.PriorityClassName)
			require.Equal(t, "podmesh-agent", spec.ServiceAccountName)
			require.Contains(t, spec.Tolerations, corev1.Toleration{Operator: corev1.TolerationOpExists},
				"tolerates every taint, so every node gets an agent")

			require.Len(t, spec.Containers, 1)
			c := spec.Containers[0]
			require.Equal(t, "field:spec.nodeName", envSources(c)["NODE_NAME"], "NODE_NAME from the downward API")
			require.Contains(t, c.Args, "--node-name=$(NODE_NAME)")
			require.Contains(t, c.Args, "--clustermesh-config=/var/lib/podmesh/clustermesh")

			sc := c.SecurityContext
			require.NotNil(t, sc)
			require.False(t, sc.Privileged != nil && *sc.Privileged, "not privileged")
			require.NotNil(t, sc.AllowPrivilegeEscalation)
			require.False(t, *sc.AllowPrivilegeEscalation)
			require.True(t, sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem)
			require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
			require.ElementsMatch(t, []corev1.Capability{"NET_ADMIN", "BPF", "PERFMON"}, sc.Capabilities.Add,
				"exactly the datapath's capabilities; no SYS_ADMIN")
			require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, spec.SecurityContext.SeccompProfile.Type)

			for _, p := range []struct {
				probe *corev1.Probe
				path  string
			}{{c.LivenessProbe, "/healthz"}, {c.ReadinessProbe, "/readyz"}, {c.StartupProbe, "/healthz"}} {
				require.NotNil(t, p.probe)
				require.NotNil(t, p.probe.HTTPGet)
				require.Equal(t, p.path, p.probe.HTTPGet.Path)
				require.Equal(t, "127.0.0.1", p.probe.HTTPGet.Host)
				require.Contains(t, c.Args, fmt.Sprintf("--status-listen=127.0.0.1:%d", p.probe.HTTPGet.Port.IntValue()),
					"probes hit the address --status-listen serves")
			}

			vols := map[string]corev1.Volume{}
			for _, v := range spec.Volumes {
				vols[v.Name] = v
			}
			mounts := map[string]corev1.VolumeMount{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m
			}
			bpffs := vols["bpffs"]
			require.NotNil(t, bpffs.HostPath)
			require.Equal(t, "/sys/fs/bpf", bpffs.HostPath.Path)
			require.Equal(t, "/sys/fs/bpf", mounts["bpffs"].MountPath)

			mesh := vols["clustermesh"]
			require.NotNil(t, mesh.Secret)
			require.Equal(t, "podmesh-clustermesh", mesh.Secret.SecretName)
			require.True(t, mesh.Secret.Optional != nil && *mesh.Secret.Optional, "an unconnected cluster still runs")
			require.Equal(t, int32(0o400), *mesh.Secret.DefaultMode)
			require.Equal(t, "/var/lib/podmesh/clustermesh", mounts["clustermesh"].MountPath)
			require.True(t, mounts["clustermesh"].ReadOnly)
			require.Len(t, spec.Volumes, 2, "no other host access")
		})
	}
}

func TestClusterMeshAPIServer(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", "clustermesh-apiserver"))
			spec := d.Spec.Template.Spec
			require.False(t, spec.HostNetwork)
			require.Equal(t, "clustermesh-apiserver", spec.ServiceAccountName)
			require.True(t, *spec.SecurityContext.RunAsNonRoot, "non-root")
			c := spec.Containers[0]
			require.Equal(t, []corev1.Capability{"ALL"}, c.SecurityContext.Capabilities.Drop)
			require.Empty(t, c.SecurityContext.Capabilities.Add)
			for _, arg := range []string{
				"--cluster-name=$(CLUSTER_NAME)", "--cluster-id=$(CLUSTER_ID)", "--pod-cidrs=$(POD_CIDRS)",
				"--allowed-peers=$(ALLOWED_PEERS)", "--tls-cert=/etc/podmesh/tls/tls.crt",
				"--tls-key=/etc/podmesh/tls/tls.key", "--tls-client-ca=/etc/podmesh/tls/ca.crt", "--listen=:2379",
			} {
				require.Contains(t, c.Args, arg)
			}
			env := envSources(c)
			for name, key := range map[string]string{"CLUSTER_NAME": "cluster-name", "CLUSTER_ID": "cluster-id", "POD_CIDRS": "pod-cidrs", "ALLOWED_PEERS": "allowed-peers"} {
				require.Equal(t, "configmap:podmesh-config/"+key, env[name])
			}
			require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
			require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
			var tlsVol *corev1.Volume
			for i, v := range spec.Volumes {
				if v.Name == "tls" {
					tlsVol = &spec.Volumes[i]
				}
			}
			require.NotNil(t, tlsVol)
			require.Equal(t, "clustermesh-apiserver-tls", tlsVol.Secret.SecretName)

			svc := typed[corev1.Service](t, find(t, objs, "Service", "clustermesh-apiserver"))
			require.Equal(t, d.Spec.Template.Labels["app.kubernetes.io/name"], svc.Spec.Selector["app.kubernetes.io/name"])
			require.Len(t, svc.Spec.Ports, 1)
			if dir == "overlays/south" {
				require.Equal(t, corev1.ServiceTypeLoadBalancer, svc.Spec.Type, "south uses the loadbalancer component")
				require.Zero(t, svc.Spec.Ports[0].NodePort)
			} else {
				require.Equal(t, corev1.ServiceTypeNodePort, svc.Spec.Type)
				require.Equal(t, int32(32379), svc.Spec.Ports[0].NodePort)
			}
			pdb := find(t, objs, "PodDisruptionBudget", "clustermesh-apiserver")
			sel, _, _ := unstructured.NestedStringMap(pdb.Object, "spec", "selector", "matchLabels")
			require.Equal(t, d.Spec.Selector.MatchLabels, sel)
		})
	}
}

// clusterIdentity is what an overlay's podmesh-config says.
type clusterIdentity struct {
	name         string
	id           uint64
	podCIDRs     []netip.Prefix
	allowedPeers []string
}

func identity(t *testing.T, dir string) clusterIdentity {
	t.Helper()
	cm := typed[corev1.ConfigMap](t, find(t, render(t, dir), "ConfigMap", "podmesh-config"))
	d := cm.Data
	require.NoError(t, meshapi.ValidateClusterName(d["cluster-name"]), dir)
	id, err := strconv.ParseUint(d["cluster-id"], 10, 32)
	require.NoError(t, err, dir)
	require.NoError(t, meshapi.ValidateClusterID(uint32(id)), dir)
	var cidrs []netip.Prefix
	for _, s := range strings.Split(d["pod-cidrs"], ",") {
		p, err := netip.ParsePrefix(s)
		require.NoError(t, err, dir)
		cidrs = append(cidrs, p)
	}
	require.NoError(t, meshapi.ValidatePodCIDRs(cidrs), dir)
	require.Contains(t, []string{"ebpf", "vxlan", "native"}, d["routing-mode"], dir)
	port, err := strconv.ParseUint(d["tunnel-port"], 10, 16)
	require.NoError(t, err, dir)
	require.NotZero(t, port)
	var peers []string
	if d["allowed-peers"] != "" {
		for _, cn := range strings.Split(d["allowed-peers"], ",") {
			peer, ok := strings.CutPrefix(cn, "remote-")
			require.True(t, ok, "%s: allowed peer %q is not remote-<cluster>", dir, cn)
			require.NoError(t, meshapi.ValidateClusterName(peer), dir)
			peers = append(peers, cn)
		}
	}
	return clusterIdentity{name: d["cluster-name"], id: id, podCIDRs: cidrs, allowedPeers: peers}
}

func TestOverlaysDescribeDistinctClusters(t *testing.T) {
	identity(t, "base")
	clusters := map[string]clusterIdentity{}
	for _, dir := range []string{"overlays/east", "overlays/west", "overlays/south"} {
		c := identity(t, dir)
		require.Equal(t, strings.TrimPrefix(dir, "overlays/"), c.name, "an overlay is named after its cluster")
		for _, other := range clusters {
			require.NotEqual(t, other.id, c.id, "cluster IDs of %s and %s", other.name, c.name)
			if p, q, overlap := meshapi.Overlap(other.podCIDRs, c.podCIDRs); overlap {
				t.Fatalf("pod CIDRs overlap: %s %s, %s %s", other.name, p, c.name, q)
			}
		}
		clusters[c.name] = c
	}
	require.Contains(t, clusters["east"].allowedPeers, "remote-west", "east serves west")
	require.Contains(t, clusters["west"].allowedPeers, "remote-east", "west serves east")
	require.ElementsMatch(t, []string{"remote-east", "remote-west"}, clusters["south"].allowedPeers, "south serves both")
}

// TestClusterRolesOnlyRead is the static half of the RBAC check (the other
// half asks a real API server): no wildcard, no write verb, no Secrets.
func TestClusterRolesOnlyRead(t *testing.T) {
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			roles := 0
			for _, u := range render(t, dir) {
				switch u.GetKind() {
				case "Role":
					t.Fatalf("unexpected Role %s: podmesh needs no namespaced permissions", u.GetName())
				case "ClusterRole":
					roles++
					role := typed[rbacv1.ClusterRole](t, u)
					require.Nil(t, role.AggregationRule, role.Name)
					for _, r := range role.Rules {
						require.Empty(t, r.NonResourceURLs, role.Name)
						require.Empty(t, r.ResourceNames, role.Name)
						for _, v := range r.Verbs {
							require.Contains(t, []string{"get", "list", "watch"}, v, "%s: verb %q", role.Name, v)
						}
						for _, res := range r.Resources {
							require.NotEqual(t, "*", res, role.Name)
							require.NotEqual(t, "secrets", res, role.Name)
							require.NotEqual(t, "configmaps", res, role.Name)
						}
						for _, g := range r.APIGroups {
							require.NotEqual(t, "*", g, role.Name)
						}
					}
				case "ClusterRoleBinding":
					b := typed[rbacv1.ClusterRoleBinding](t, u)
					require.Len(t, b.Subjects, 1, b.Name)
					require.Equal(t, "ServiceAccount", b.Subjects[0].Kind, "%s binds only a ServiceAccount", b.Name)
					require.Equal(t, "podmesh-system", b.Subjects[0].Namespace, b.Name)
				}
			}
			require.Equal(t, 2, roles, "one ClusterRole per component")
		})
	}
}
