package server_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

func createService(t *testing.T, k kubernetes.Interface, ns, name string, spec corev1.ServiceSpec) {
	t.Helper()
	_, err := k.CoreV1().Services(ns).Create(t.Context(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// createSlice writes an EndpointSlice of a service as the endpoint-slice
// controller would (no controller-manager runs in these tests).
func createSlice(t *testing.T, k kubernetes.Interface, ns, service, name string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	_, err := k.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// createExport creates a ServiceExport and returns its creation time as the
// wire format renders it.
func createExport(t *testing.T, h *harness, ns, name string) string {
	t.Helper()
	se, err := h.mcs.MulticlusterV1beta1().ServiceExports(ns).Create(t.Context(),
		&mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, metav1.CreateOptions{})
	require.NoError(t, err)
	return se.CreationTimestamp.UTC().Format(time.RFC3339Nano)
}

// families renders the IP families the API server chose for a Service, as
// the entry carries them.
func families(t *testing.T, k kubernetes.Interface, ns, name string) string {
	t.Helper()
	svc, err := k.CoreV1().Services(ns).Get(t.Context(), name, metav1.GetOptions{})
	require.NoError(t, err)
	b, err := json.Marshal(svc.Spec.IPFamilies)
	require.NoError(t, err)
	return string(b)
}

func deleteExport(t *testing.T, h *harness, ns, name string) {
	t.Helper()
	require.NoError(t, h.mcs.MulticlusterV1beta1().ServiceExports(ns).Delete(t.Context(), name, metav1.DeleteOptions{}))
}

// cond is the part of a condition the exporter decides.
type cond struct {
	Status metav1.ConditionStatus
	Reason string
}

// waitConditions polls a ServiceExport until its Valid and Ready conditions
// are as wanted, and returns it.
func waitConditions(t *testing.T, h *harness, ns, name string, valid, ready cond) *mcsv1beta1.ServiceExport {
	t.Helper()
	var se *mcsv1beta1.ServiceExport
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		se, err = h.mcs.MulticlusterV1beta1().ServiceExports(ns).Get(t.Context(), name, metav1.GetOptions{})
		if !assert.NoError(c, err) {
			return
		}
		for typ, want := range map[mcsv1beta1.ServiceExportConditionType]cond{mcsv1beta1.ServiceExportConditionValid: valid, mcsv1beta1.ServiceExportConditionReady: ready} {
			got := meta.FindStatusCondition(se.Status.Conditions, string(typ))
			if got == nil {
				c.Errorf("%s/%s: no %s condition in %+v", ns, name, typ, se.Status.Conditions)
				continue
			}
			if (cond{got.Status, got.Reason}) != want {
				c.Errorf("%s/%s: %s is %s/%s, want %s/%s", ns, name, typ, got.Status, got.Reason, want.Status, want.Reason)
			}
			if got.ObservedGeneration != se.Generation {
				c.Errorf("%s/%s: %s observed generation %d, object generation %d", ns, name, typ, got.ObservedGeneration, se.Generation)
			}
		}
	}, waitFor, 20*time.Millisecond)
	return se
}

var (
	validTrue      = cond{metav1.ConditionTrue, string(mcsv1beta1.ServiceExportReasonValid)}
	readyExported  = cond{metav1.ConditionTrue, string(mcsv1beta1.ServiceExportReasonExported)}
	readyFailed    = cond{metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonFailed)}
	noService      = cond{metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonNoService)}
	invalidSvcType = cond{metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonInvalidServiceType)}
)

// A Service is published only while its ServiceExport exists; the export's
// conditions say so.
func TestOnlyExportedServicesArePublished(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	c := h.client(t)
	k := h.k
	spec := corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("http")}}}
	createService(t, k, "default", "private", spec)
	createSlice(t, k, "default", "private", "private-1", discoveryv1.Endpoint{Addresses: []string{"10.1.1.20"}})
	createService(t, k, "default", "web", spec)
	createSlice(t, k, "default", "web", "web-1", discoveryv1.Endpoint{Addresses: []string{"10.1.1.21"}, Zone: ptr.To("z1"),
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web-7d9f-abcde"}})

	// Absent: "web" is exported after "private" was created, so once web
	// is published, private has been looked at and was not published.
	exportTime := createExport(t, h, "default", "web")
	waitValue(t, c, meshapi.ServiceKey(cluster, "default", "web"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":false,"ports":[{"name":"http","port":80,"protocol":"TCP","appProtocol":"http"}],`+
			`"endpoints":[{"ip":"10.1.1.21","hostname":"","node":"","ready":true,"serving":true,"zone":"z1","pod":"web-7d9f-abcde"}],`+
			`"exportTime":"`+exportTime+`","type":"ClusterSetIP","sessionAffinity":"None","ipFamilies":`+families(t, k, "default", "web")+`}`)
	v, err := value(t.Context(), c, meshapi.ServiceKey(cluster, "default", "private"))
	require.NoError(t, err)
	require.Empty(t, v, "a Service without a ServiceExport is never published")
	require.Equal(t, 2.0, gauge(t, h.srv.SyncMetrics().NotExported.WithLabelValues(meshapi.KindServices, kubesync.ReasonNotExported)),
		"private and the API server's own default/kubernetes are not exported")
	waitConditions(t, h, "default", "web", validTrue, readyExported)

	// Present: exporting it publishes it.
	createExport(t, h, "default", "private")
	waitConditions(t, h, "default", "private", validTrue, readyExported)
	require.NotEmpty(t, mustValue(t, c, meshapi.ServiceKey(cluster, "default", "private")))

	// Removed: the entry goes with the export, the Service stays.
	deleteExport(t, h, "default", "private")
	waitValue(t, c, meshapi.ServiceKey(cluster, "default", "private"), "")
	_, err = k.CoreV1().Services("default").Get(t.Context(), "private", metav1.GetOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, mustValue(t, c, meshapi.ServiceKey(cluster, "default", "web")), "the other export stays")
}

// ExternalName cannot be exported (InvalidServiceType); a ServiceExport
// without its Service says NoService and is published once the Service
// appears; deleting the Service of a live export withdraws the entry. The
// Conflict condition belongs to the importer and survives every write, and a
// condition that does not change is not written again.
func TestExportConditionsFollowTheService(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	c := h.client(t)
	k := h.k
	ctx := t.Context()
	key := meshapi.ServiceKey(cluster, "default", "db")

	createService(t, k, "default", "ext", corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"})
	createExport(t, h, "default", "ext")
	waitConditions(t, h, "default", "ext", invalidSvcType, readyFailed)

	createExport(t, h, "default", "db")
	waitConditions(t, h, "default", "db", noService, readyFailed)

	// The importer's condition, written under its own field manager.
	conflict := map[string]any{
		"apiVersion": mcsv1beta1.GroupVersion.String(), "kind": mcsv1beta1.ServiceExportKindName,
		"metadata": map[string]any{"namespace": "default", "name": "db"},
		"status": map[string]any{"conditions": []metav1.Condition{{Type: string(mcsv1beta1.ServiceExportConditionConflict),
			Status: metav1.ConditionFalse, Reason: string(mcsv1beta1.ServiceExportReasonNoConflicts), Message: "no conflict", LastTransitionTime: metav1.Now()}}},
	}
	body, err := json.Marshal(conflict)
	require.NoError(t, err)
	_, err = h.mcs.MulticlusterV1beta1().ServiceExports("default").Patch(ctx, "db", types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: "podmesh-importer", Force: ptr.To(true)}, "status")
	require.NoError(t, err)

	createService(t, k, "default", "db", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 5432, Protocol: corev1.ProtocolTCP}}})
	se := waitConditions(t, h, "default", "db", validTrue, readyExported)
	require.NotEmpty(t, mustValue(t, c, key))
	require.NotNil(t, meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict)), "the importer's condition is kept")

	// No write storm: endpoint changes change the entry, not the
	// conditions.
	writes := counter(t, h.srv.SyncMetrics().ExportStatusWrites.WithLabelValues("ok"))
	for i := range 3 {
		createSlice(t, k, "default", "db", fmt.Sprintf("db-%d", i), discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.1.1.%d", 30+i)}})
	}
	mustEntryWithEndpoints(t, c, key, 3)
	requireExportUntouched(t, h, se, "later")
	after := counter(t, h.srv.SyncMetrics().ExportStatusWrites.WithLabelValues("ok"))
	require.LessOrEqual(t, after-writes, 2.0, "only later's own conditions were written (Pending, then Ready, or Ready at once)")

	// The Service goes while the export stays: NoService, entry withdrawn.
	require.NoError(t, k.CoreV1().Services("default").Delete(ctx, "db", metav1.DeleteOptions{}))
	waitValue(t, c, key, "")
	se = waitConditions(t, h, "default", "db", noService, readyFailed)
	require.NotNil(t, meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict)), "the importer's condition is kept")
	owners := map[string]string{} // field manager -> the status fields it owns
	for _, mf := range se.ManagedFields {
		if mf.Subresource == "status" && mf.FieldsV1 != nil {
			owners[mf.Manager] = string(mf.FieldsV1.Raw)
		}
	}
	require.Contains(t, owners["podmesh-importer"], `"k:{\"type\":\"Conflict\"}"`, "the importer still owns its condition")
	require.NotContains(t, owners[kubesync.ExportFieldManager], `Conflict`, "the exporter never took it")
	require.Contains(t, owners[kubesync.ExportFieldManager], `"k:{\"type\":\"Valid\"}"`)
	require.Contains(t, owners[kubesync.ExportFieldManager], `"k:{\"type\":\"Ready\"}"`)
	v, err := value(ctx, c, meshapi.ServiceKey(cluster, "default", "ext"))
	require.NoError(t, err)
	require.Empty(t, v, "an ExternalName service is never published")
}

// requireExportUntouched checks that the status writer has not written se
// since it was read. Barrier: the writer takes exports in the order they were
// woken, so once a new export ("barrier", created after se's service entry
// showed the last change, i.e. after se was woken for it) is Ready, se's
// wake-ups have been handled.
func requireExportUntouched(t *testing.T, h *harness, se *mcsv1beta1.ServiceExport, barrier string) {
	t.Helper()
	createService(t, h.k, se.Namespace, barrier, corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}})
	createExport(t, h, se.Namespace, barrier)
	waitConditions(t, h, se.Namespace, barrier, validTrue, readyExported)
	now, err := h.mcs.MulticlusterV1beta1().ServiceExports(se.Namespace).Get(t.Context(), se.Name, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, se.ResourceVersion, now.ResourceVersion, "ServiceExport %s/%s was written again", se.Namespace, se.Name)
}

// mustEntryWithEndpoints waits until the entry at key lists n endpoints and
// returns it.
func mustEntryWithEndpoints(t *testing.T, c *clientv3.Client, key string, n int) string {
	t.Helper()
	var got string
	require.Eventually(t, func() bool {
		v, err := value(t.Context(), c, key)
		if err != nil || v == "" {
			return false
		}
		s, err := meshapi.DecodeService([]byte(v))
		got = v
		return err == nil && len(s.Endpoints) == n
	}, waitFor, 20*time.Millisecond)
	return got
}

// A StatefulSet's headless Service with publishNotReadyAddresses: the
// endpoint-slice controller marks its endpoints ready although the pods are
// not, and that readiness is published as is, with the hostname and the pod.
func TestPublishNotReadyAddressesEndpointIsPublishedReady(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	c := h.client(t)
	k := h.k
	createService(t, k, "default", "db", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, PublishNotReadyAddresses: true,
		Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{{Name: "sql", Port: 5432, Protocol: corev1.ProtocolTCP}}})
	pod := func(name string) *corev1.ObjectReference {
		return &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: name}
	}
	// What the controller writes for publishNotReadyAddresses: ready true
	// for a pod that is not ready, serving as the pod says.
	createSlice(t, k, "default", "db", "db-1",
		discoveryv1.Endpoint{Addresses: []string{"10.1.1.40"}, Hostname: ptr.To("db-0"), NodeName: ptr.To("n1"), TargetRef: pod("db-0"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(false), Terminating: ptr.To(false)}},
		discoveryv1.Endpoint{Addresses: []string{"10.1.1.41"}, Hostname: ptr.To("db-1"), NodeName: ptr.To("n1"), TargetRef: pod("db-1"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}})
	exportTime := createExport(t, h, "default", "db")
	waitValue(t, c, meshapi.ServiceKey(cluster, "default", "db"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"db","headless":true,"ports":[{"name":"sql","port":5432,"protocol":"TCP"}],`+
			`"endpoints":[{"ip":"10.1.1.40","hostname":"db-0","node":"n1","ready":true,"pod":"db-0"},`+
			`{"ip":"10.1.1.41","hostname":"db-1","node":"n1","ready":true,"serving":true,"pod":"db-1"}],`+
			`"exportTime":"`+exportTime+`","type":"Headless","sessionAffinity":"None","ipFamilies":`+families(t, k, "default", "db")+`}`)
	waitConditions(t, h, "default", "db", validTrue, readyExported)
}

// A burst of EndpointSlice updates of one exported service: few etcd writes,
// and no ServiceExport status write at all (the conditions do not change).
func TestBurstOfEndpointUpdatesOfAnExportIsCoalesced(t *testing.T) {
	h := newHarness(t)
	// As in TestBurstOfPodUpdatesIsCoalesced: a window long enough that the
	// write count cannot approach the bound below however slow the burst.
	h.cfg.CoalesceDelay = 500 * time.Millisecond
	h.start(t)
	c := h.client(t)
	k := h.k
	ctx := t.Context()
	key := meshapi.ServiceKey(cluster, "default", "db")
	createService(t, k, "default", "db", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 5432, Protocol: corev1.ProtocolTCP}}})
	createSlice(t, k, "default", "db", "db-1", discoveryv1.Endpoint{Addresses: []string{"10.1.1.1"}})
	createExport(t, h, "default", "db")
	se := waitConditions(t, h, "default", "db", validTrue, readyExported)
	mustEntryWithEndpoints(t, c, key, 1)
	puts := h.srv.SyncMetrics().EtcdWrites.WithLabelValues("put")
	before := counter(t, puts)

	// Each update grows the slice's endpoint list by one address, as fast
	// as the API server takes them; the last state has 201 endpoints.
	const updates = 200
	for i := range updates {
		ip := fmt.Sprintf("10.1.%d.%d", 2+i/250, i%250+1)
		err := retry.RetryOnConflict(patientRetry, func() error {
			es, err := k.DiscoveryV1().EndpointSlices("default").Get(ctx, "db-1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
			_, err = k.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{})
			return err
		})
		require.NoError(t, err)
	}
	mustEntryWithEndpoints(t, c, key, updates+1)
	writes := counter(t, puts) - before
	t.Logf("%d endpoint updates of one exported service caused %.0f etcd writes (heartbeats included)", updates, writes)
	require.Less(t, writes, float64(updates)/4, "a burst of endpoint changes is coalesced")

	requireExportUntouched(t, h, se, "later")
}
