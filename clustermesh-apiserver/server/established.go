package server

import (
	"context"
	"errors"
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

// errEstablishedByAnother says the ConfigMap records another cluster: a
// second clustermesh-apiserver in the namespace (or a renamed cluster) is a
// newcomer and must not inherit the first one's seniority.
var errEstablishedByAnother = errors.New("ConfigMap records another cluster")

// established returns the creation time of EstablishedConfigMap in
// namespace, creating the ConfigMap on the first start. When the ConfigMap
// names another cluster or ID it returns errEstablishedByAnother: the
// caller then publishes no time, which ranks after every cluster that has
// one.
func established(ctx context.Context, kube kubernetes.Interface, namespace, cluster string, id uint32) (time.Time, error) {
	api := kube.CoreV1().ConfigMaps(namespace)
	for range 2 {
		cm, err := api.Get(ctx, EstablishedConfigMap, metav1.GetOptions{})
		if err == nil {
			if c, i := cm.Data["cluster"], cm.Data["clusterID"]; c != cluster || i != strconv.FormatUint(uint64(id), 10) {
				return time.Time{}, fmt.Errorf("%w: %s/%s was created for cluster %q (ID %s), this is %q (ID %d)", errEstablishedByAnother, namespace, EstablishedConfigMap, c, i, cluster, id)
			}
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
