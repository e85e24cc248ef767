package server_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// grantEstablishedRBAC gives exporterUser the namespaced rights the
// daemonset's Role gives: create ConfigMaps, get only EstablishedConfigMap.
func grantEstablishedRBAC(t *testing.T, h *harness, ns string) {
	t.Helper()
	ctx := t.Context()
	_, err := h.k.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "podmesh-established"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{server.EstablishedConfigMap}, Verbs: []string{"get"}},
		}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = h.k.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "podmesh-established"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "podmesh-established"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: exporterUser}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// The cluster-config says when the cluster joined the mesh: the creation
// time of a ConfigMap the first start creates, so a restart (whose etcd is
// rebuilt from Kubernetes) publishes the same time and agents keep ranking
// this cluster as they did.
func TestClusterConfigCarriesAnEstablishedTimeThatSurvivesRestarts(t *testing.T) {
	h := newHarness(t)
	const ns = "kube-system"
	grantEstablishedRBAC(t, h, ns)
	h.cfg.Namespace = ns
	h.start(t)
	c := h.client(t)
	read := func() *meshapi.ClusterConfig {
		cc, err := meshapi.DecodeClusterConfig([]byte(mustValue(t, c, meshapi.ClusterConfigKey(cluster))))
		require.NoError(t, err)
		return cc
	}
	first := read()
	require.False(t, first.Established.IsZero(), "established is published")
	cm, err := h.k.CoreV1().ConfigMaps(ns).Get(t.Context(), server.EstablishedConfigMap, metav1.GetOptions{})
	require.NoError(t, err)
	require.True(t, cm.CreationTimestamp.Time.Equal(first.Established), "established is the ConfigMap's creation time")
	require.Equal(t, cluster, cm.Data["cluster"])

	h.stop(t)
	h.start(t)
	c = h.client(t)
	require.True(t, first.Established.Equal(read().Established), "a restart publishes the same time")
}

// A second clustermesh-apiserver in the namespace (another cluster name,
// as an impostor or a renamed cluster would be) finds the ConfigMap of the
// first: it must not inherit that cluster's seniority, so it publishes no
// established time and ranks after every cluster that has one.
func TestAnotherClustersEstablishedTimeIsNotInherited(t *testing.T) {
	h := newHarness(t)
	const ns = "kube-system"
	grantEstablishedRBAC(t, h, ns)
	_, err := h.k.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: server.EstablishedConfigMap},
		Data:       map[string]string{"cluster": "first", "clusterID": "7"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	h.cfg.Namespace = ns
	h.start(t)
	cc, err := meshapi.DecodeClusterConfig([]byte(mustValue(t, h.client(t), meshapi.ClusterConfigKey(cluster))))
	require.NoError(t, err)
	require.True(t, cc.Established.IsZero(), "inherited %s from cluster first", cc.Established)
}
