package mcscrd_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1alpha1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/pkg/mcscrd"
	"github.com/podmesh/podmesh/test/kubetest"
)

func TestObjectsAreTheTwoMCSCRDs(t *testing.T) {
	objs, err := mcscrd.Objects()
	require.NoError(t, err)
	var names []string
	for _, o := range objs {
		names = append(names, o.GetName())
	}
	require.Equal(t, []string{"serviceexports.multicluster.x-k8s.io", "serviceimports.multicluster.x-k8s.io"}, names)
}

// Installed twice (idempotent), a ServiceExport written as v1beta1 (the
// stored version) reads back as v1alpha1 (the version CoreDNS reads).
func TestInstallServesBothVersionsAndIsIdempotent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	kube := kubetest.Start(t)
	ctx := t.Context()
	require.NoError(t, mcscrd.Install(ctx, kube.Config))
	require.NoError(t, mcscrd.Install(ctx, kube.Config))

	mcs, err := mcsclient.NewForConfig(kube.Config)
	require.NoError(t, err)
	_, err = mcs.MulticlusterV1beta1().ServiceExports(corev1.NamespaceDefault).Create(ctx,
		&mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	old, err := mcs.MulticlusterV1alpha1().ServiceExports(corev1.NamespaceDefault).Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, "web", old.Name)
	_, err = mcs.MulticlusterV1alpha1().ServiceImports(corev1.NamespaceDefault).Create(ctx,
		&mcsv1alpha1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: mcsv1alpha1.ServiceImportSpec{
			Type: mcsv1alpha1.Headless, Ports: []mcsv1alpha1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
}
