package server

import (
	"context"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// EstablishedConfigMap is the ConfigMap whose creation time records when
// this cluster first published into the mesh. The cluster-config carries it
// as "established", and every agent ranks conflicting remotes by it (the
// earlier cluster keeps its place), so it must survive restarts of a
// clustermesh-apiserver whose etcd is rebuilt from Kubernetes: Kubernetes
// is its durable home, and the API server, not a clock here, sets it.
const EstablishedConfigMap = "podmesh-established"

// established returns the creation time of EstablishedConfigMap in
// namespace, creating the ConfigMap on the first start.
func established(ctx context.Context, kube kubernetes.Interface, namespace, cluster string, id uint32) (time.Time, error) {
	api := kube.CoreV1().ConfigMaps(namespace)
	for range 2 {
		cm, err := api.Get(ctx, EstablishedConfigMap, metav1.GetOptions{})
		if err == nil {
			return cm.CreationTimestamp.UTC(), nil
		}
		if !apierrors.IsNotFound(err) {
			return time.Time{}, fmt.Errorf("get ConfigMap %s/%s: %w", namespace, EstablishedConfigMap, err)
		}
		cm, err = api.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: EstablishedConfigMap, Namespace: namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "podmesh"}},
			Data: map[string]string{"cluster": cluster, "clusterID": strconv.FormatUint(uint64(id), 10)},
		}, metav1.CreateOptions{})
		if err == nil {
			return cm.CreationTimestamp.UTC(), nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return time.Time{}, fmt.Errorf("create ConfigMap %s/%s: %w", namespace, EstablishedConfigMap, err)
		}
		// Another replica created it meanwhile: read it.
	}
	return time.Time{}, fmt.Errorf("ConfigMap %s/%s: created and gone again", namespace, EstablishedConfigMap)
}
