package importer

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

var (
	t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 = t0.Add(time.Hour)
	t2 = t1.Add(time.Hour)
)

func webExport(ns string, at time.Time, ports []meshapi.ServicePort, eps ...meshapi.ServiceEndpoint) meshapi.Service {
	return meshapi.Service{Namespace: ns, Name: "web", Type: meshapi.ServiceTypeClusterSetIP, ExportTime: at, Ports: ports, Endpoints: eps, SessionAffinity: "None", IPFamilies: []string{"IPv4"}}
}

var (
	portHTTP  = meshapi.ServicePort{Name: "http", Port: 80, Protocol: "TCP"}
	portHTTPS = meshapi.ServicePort{Name: "https", Port: 443, Protocol: "TCP", AppProtocol: "https"}
)

// TestImportFromTwoRemotes: two remotes export the same ClusterSetIP
// service and a headless one; the local cluster gets a ServiceImport with
// the union of ports, the derived Service whose ClusterIP is in spec.ips,
// and per-cluster slices labelled for CoreDNS and kube-proxy.
func TestImportFromTwoRemotes(t *testing.T) {
	k := startKube(t)
	ctx := context.Background()
	west, south := westAndSouth(t, k, "shop")
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", ""), ep("10.2.0.11", "")))
	south.export(t, webExport("shop", t1, []meshapi.ServicePort{portHTTP, portHTTPS}, ep("10.3.0.10", "")))
	dbEP := ep("10.2.0.20", "")
	dbEP.Pod = "db-0" // no hostname: the pod's name stands in (KEP-1645)
	west.export(t, meshapi.Service{Namespace: "shop", Name: "db", Type: meshapi.ServiceTypeHeadless, Headless: true, ExportTime: t0,
		Ports: []meshapi.ServicePort{{Name: "pg", Port: 5432, Protocol: "TCP"}}, Endpoints: []meshapi.ServiceEndpoint{dbEP, ep("10.2.0.21", "db-1")}})
	// A namespace that does not exist here is not imported into.
	west.export(t, webExport("elsewhere", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.30", "")))

	imp, _ := runImporter(t, k, newConfigDir(t, west, south), nil)

	var si *mcsv1beta1.ServiceImport
	require.Eventually(t, func() bool {
		got, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil || len(got.Spec.IPs) == 0 || len(got.Status.Clusters) != 2 {
			return false
		}
		si = got
		return true
	}, waitFor, 50*time.Millisecond)
	assert.Equal(t, mcsv1beta1.ClusterSetIP, si.Spec.Type)
	require.Len(t, si.Spec.Ports, 2, "union of west's and south's ports")
	assert.Equal(t, "http", si.Spec.Ports[0].Name)
	assert.Equal(t, int32(443), si.Spec.Ports[1].Port)
	assert.Equal(t, []mcsv1beta1.ClusterStatus{{Cluster: "south"}, {Cluster: "west"}}, si.Status.Clusters)
	assert.Equal(t, ControllerName, si.Labels[LabelManagedBy])

	derivedName := DerivedName("shop", "web")
	assert.Equal(t, derivedName, si.Annotations[AnnotationDerivedService])
	derived, err := k.Client.CoreV1().Services("shop").Get(ctx, derivedName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, derived.Spec.ClusterIPs, si.Spec.IPs, "spec.ips is the derived Service's ClusterIP")
	assert.Empty(t, derived.Spec.Selector, "the derived Service's endpoints are the imported slices")
	require.Len(t, derived.OwnerReferences, 1)
	assert.Equal(t, si.UID, derived.OwnerReferences[0].UID)

	require.Eventually(t, func() bool {
		return len(addrsOf(k.slicesOf(t, "shop", "web", "west"))) == 2 && len(addrsOf(k.slicesOf(t, "shop", "web", "south"))) == 1
	}, waitFor, 50*time.Millisecond)
	for _, s := range append(k.slicesOf(t, "shop", "web", "west"), k.slicesOf(t, "shop", "web", "south")...) {
		assert.Equal(t, derivedName, s.Labels[discoveryv1.LabelServiceName], "kube-proxy: the derived Service")
		assert.Equal(t, "web", s.Labels[LabelMCSServiceName])
		assert.Equal(t, ControllerName, s.Labels[discoveryv1.LabelManagedBy])
		assert.Equal(t, discoveryv1.AddressTypeIPv4, s.AddressType)
		for _, e := range s.Endpoints {
			assert.True(t, *e.Conditions.Ready)
			assert.Equal(t, "node-1", *e.NodeName)
			assert.Equal(t, "zone-a", *e.Zone)
		}
	}
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.2.0.11": true}, addrsOf(k.slicesOf(t, "shop", "web", "west")))

	// Headless: no derived Service, hostnames for every endpoint.
	require.Eventually(t, func() bool { return len(addrsOf(k.slicesOf(t, "shop", "db", "west"))) == 2 }, waitFor, 50*time.Millisecond)
	db, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "db", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, mcsv1beta1.Headless, db.Spec.Type)
	assert.Empty(t, db.Spec.IPs)
	_, err = k.Client.CoreV1().Services("shop").Get(ctx, DerivedName("shop", "db"), metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "no derived Service for a headless import: %v", err)
	hostnames := map[string]string{}
	for _, s := range k.slicesOf(t, "shop", "db", "west") {
		for _, e := range s.Endpoints {
			hostnames[e.Addresses[0]] = *e.Hostname
		}
	}
	assert.Equal(t, map[string]string{"10.2.0.20": "db-0", "10.2.0.21": "db-1"}, hostnames)

	_, err = k.mcs.MulticlusterV1beta1().ServiceImports("elsewhere").Get(ctx, "web", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "no import into a namespace that does not exist")

	// Garbage collection: south stops exporting, then west.
	south.unexport(t, "shop", "web")
	require.Eventually(t, func() bool {
		got, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(got.Spec.Ports) == 1 && len(got.Status.Clusters) == 1 && len(k.slicesOf(t, "shop", "web", "south")) == 0
	}, waitFor, 50*time.Millisecond)
	west.unexport(t, "shop", "web")
	require.Eventually(t, func() bool {
		_, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		_, serr := k.Client.CoreV1().Services("shop").Get(ctx, derivedName, metav1.GetOptions{})
		return apierrors.IsNotFound(err) && apierrors.IsNotFound(serr) && len(k.slicesOf(t, "shop", "web", "west")) == 0
	}, waitFor, 50*time.Millisecond)

	st := imp.Status()
	require.Len(t, st.Clusters, 2)
	for _, c := range st.Clusters {
		assert.True(t, c.Synced, c.Cluster)
		require.NotNil(t, c.DataAgeSeconds, c.Cluster)
	}
}

// TestConflictsOldestWins: the oldest export decides the type; a newer
// export of another type is not imported, a clashing port is left out, and
// the local ServiceExport gets the Conflict condition from the importer's
// field manager, plus an Event.
func TestConflictsOldestWins(t *testing.T) {
	k := startKube(t)
	ctx := context.Background()
	west, south := westAndSouth(t, k, "app")
	// The local cluster's own published state, read like the embedded
	// etcd's: east exports a newer Headless "web".
	east := newFakeCluster(t, "east", 1, "10.1.0.0/16", true)

	west.export(t, webExport("app", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
	clash := meshapi.ServicePort{Name: "http", Port: 8080, Protocol: "TCP"}
	south.export(t, webExport("app", t1, []meshapi.ServicePort{clash, portHTTPS}, ep("10.3.0.10", "")))
	headless := webExport("app", t2, []meshapi.ServicePort{portHTTP}, ep("10.1.0.10", "web-0"))
	headless.Type, headless.Headless = meshapi.ServiceTypeHeadless, true
	east.export(t, headless)
	_, err := k.mcs.MulticlusterV1beta1().ServiceExports("app").Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"}}, metav1.CreateOptions{})
	require.NoError(t, err)

	runImporter(t, k, newConfigDir(t, west, south), func(o *Options) { o.Local = east.etcd.Client })

	var cond *metav1.Condition
	require.Eventually(t, func() bool {
		se, err := k.mcs.MulticlusterV1beta1().ServiceExports("app").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false
		}
		cond = meta.FindStatusCondition(se.Status.Conditions, "Conflict")
		if cond == nil || cond.Status != metav1.ConditionTrue {
			return false
		}
		for _, mf := range se.ManagedFields {
			if mf.Manager == FieldManager && mf.Subresource == "status" {
				return true
			}
		}
		return false
	}, waitFor, 50*time.Millisecond)
	assert.Equal(t, "PortConflict,TypeConflict", cond.Reason)
	assert.Contains(t, cond.Message, "oldest export is west's")

	si, err := k.mcs.MulticlusterV1beta1().ServiceImports("app").Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, mcsv1beta1.ClusterSetIP, si.Spec.Type, "the oldest export's type")
	assert.Equal(t, []mcsv1beta1.ClusterStatus{{Cluster: "south"}, {Cluster: "west"}}, si.Status.Clusters, "east's Headless export is not imported")
	var ports []int32
	for _, p := range si.Spec.Ports {
		ports = append(ports, p.Port)
	}
	assert.Equal(t, []int32{80, 443}, ports, "south's http=8080 clashes with west's http=80 and is left out")
	assert.Contains(t, si.Annotations[AnnotationConflict], "PortConflict,TypeConflict")
	assert.Empty(t, k.slicesOf(t, "app", "web", "east"), "a type-conflicting export contributes no endpoints")

	require.Eventually(t, func() bool {
		evs, err := k.Client.CoreV1().Events("app").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "ServiceExport" && e.InvolvedObject.Name == "web" && e.Reason == "PortConflict,TypeConflict" && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	}, waitFor, 100*time.Millisecond, "a Warning Event on the ServiceExport")

	// The conflict resolves: east exports ClusterSetIP with a compatible
	// port; the condition turns False and east's endpoints are imported.
	headless.Type, headless.Headless = meshapi.ServiceTypeClusterSetIP, false
	east.export(t, headless)
	south.unexport(t, "app", "web")
	require.Eventually(t, func() bool {
		se, err := k.mcs.MulticlusterV1beta1().ServiceExports("app").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false
		}
		c := meta.FindStatusCondition(se.Status.Conditions, "Conflict")
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonNoConflicts && len(addrsOf(k.slicesOf(t, "app", "web", "east"))) == 1
	}, waitFor, 50*time.Millisecond)
}

// TestUntrustedRemotes: a remote without the serviceExports capability
// imports nothing; an endpoint outside a remote's pod CIDRs, and a value that
// claims another cluster, appear in no slice.
func TestUntrustedRemotes(t *testing.T) {
	forEachWayToReadRemotes(t, testUntrustedRemotes)
}

func testUntrustedRemotes(t *testing.T, runImporter runFunc) {
	k := startKube(t)
	ctx := context.Background()
	west, south := westAndSouth(t, k, "shop")
	old := newFakeCluster(t, "north", 4, "10.4.0.0/16", false)
	old.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.4.0.10", "")))
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
	// west lies: endpoints in south's pod CIDR and in nobody's.
	lies := webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.11", ""), ep("10.3.0.66", ""))
	lies.Name = "lies"
	west.export(t, lies)
	lies.Name, lies.Endpoints = "more-lies", []meshapi.ServiceEndpoint{ep("192.168.7.7", "")}
	west.export(t, lies)
	// west also writes a value in south's name under its own key.
	forged := webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.3.0.77", ""))
	forged.Name, forged.Cluster, forged.ClusterID = "api", "south", 3
	west.export(t, forged)
	south.export(t, webExport("shop", t1, []meshapi.ServicePort{portHTTP}, ep("10.3.0.10", "")))

	imp, _ := runImporter(t, k, newConfigDir(t, old, west, south), nil)
	require.Eventually(t, func() bool {
		got, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(got.Status.Clusters) == 2 && len(addrsOf(k.slicesOf(t, "shop", "web", "west"))) == 1 && len(addrsOf(k.slicesOf(t, "shop", "web", "south"))) == 1
	}, waitFor, 50*time.Millisecond)

	all, err := k.Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ControllerName})
	require.NoError(t, err)
	got := addrsOf(all.Items)
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.3.0.10": true}, got, "only addresses inside their own cluster's pod CIDRs")
	assert.Empty(t, k.slicesOf(t, "shop", "web", "north"), "a format-1 remote exports nothing")
	for _, name := range []string{"api", "lies", "more-lies"} {
		_, err = k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, name, metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "%s: a lying entry is refused whole: %v", name, err)
	}

	st := imp.Status()
	byName := map[string]ClusterStatus{}
	for _, c := range st.Clusters {
		byName[c.Cluster] = c
	}
	assert.Contains(t, byName["north"].Note, "service format 1")
	assert.Equal(t, 0, byName["north"].Services)
	assert.Equal(t, uint64(2), byName["west"].InvalidTotal["out_of_range"])
	assert.Equal(t, uint64(1), byName["west"].InvalidTotal["mismatch"])
}

// TestRemoteFailures: an unreachable remote keeps its endpoints; after
// reconnecting, the import resyncs exactly without ever withdrawing an
// endpoint that still exists; a removed config file withdraws the remote.
func TestRemoteFailures(t *testing.T) {
	forEachWayToReadRemotes(t, testRemoteFailures)
}

func testRemoteFailures(t *testing.T, runImporter runFunc) {
	k := startKube(t)
	ctx := context.Background()
	west, south := westAndSouth(t, k, "shop")
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", ""), ep("10.2.0.11", "")))
	south.export(t, webExport("shop", t1, []meshapi.ServicePort{portHTTP}, ep("10.3.0.10", "")))
	dir := newConfigDir(t, west, south)
	imp, stop := runImporter(t, k, dir, nil)
	require.Eventually(t, func() bool { return len(addrsOf(k.slicesOf(t, "shop", "web", "west"))) == 2 }, waitFor, 50*time.Millisecond)

	status := func(name string) ClusterStatus { return clusterStatus(imp, name) }
	west.fwd.Cut()
	require.Eventually(t, func() bool { return !status("west").Connected }, waitFor, 50*time.Millisecond)
	// While west is unreachable it changes: .10 goes, .12 comes.
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.11", ""), ep("10.2.0.12", "")))
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.2.0.11": true}, addrsOf(k.slicesOf(t, "shop", "web", "west")), "an unreachable remote keeps its last known endpoints")
	ageBefore := *status("west").DataAgeSeconds

	// Watch west's slices from now on: no state may lack 10.2.0.11.
	w, err := k.Client.DiscoveryV1().EndpointSlices("shop").Watch(ctx, metav1.ListOptions{LabelSelector: LabelSourceCluster + "=west"})
	require.NoError(t, err)
	defer w.Stop()
	west.fwd.Restore(t)
	final := map[string]bool{"10.2.0.11": true, "10.2.0.12": true}
	withdrawn := false
	deadline := time.After(waitFor)
	for done := false; !done; {
		select {
		case ev := <-w.ResultChan():
			s, ok := ev.Object.(*discoveryv1.EndpointSlice)
			require.True(t, ok, "watch event %v", ev.Type)
			addrs := addrsOf([]discoveryv1.EndpointSlice{*s})
			if ev.Type == watch.Deleted || !addrs["10.2.0.11"] {
				withdrawn = true
			}
			done = assert.ObjectsAreEqual(final, addrs) && ev.Type != watch.Deleted
		case <-deadline:
			t.Fatalf("west's slices never became %v: %v", final, addrsOf(k.slicesOf(t, "shop", "web", "west")))
		}
	}
	assert.False(t, withdrawn, "the reconnect resync withdrew an endpoint that still exists")
	assert.Less(t, *status("west").DataAgeSeconds, ageBefore+waitFor.Seconds())

	// An importer restart while south is unreachable keeps south's slices
	// (south is configured but not reached yet), and removes what belongs
	// to a cluster no longer configured.
	stop()
	south.fwd.Cut()
	dir.unmount(t, west)
	imp, _ = runImporter(t, k, dir, nil)
	require.Eventually(t, func() bool { return len(k.slicesOf(t, "shop", "web", "west")) == 0 }, waitFor, 50*time.Millisecond)
	assert.Equal(t, map[string]bool{"10.3.0.10": true}, addrsOf(k.slicesOf(t, "shop", "web", "south")), "a pending cluster's slices are kept")
	si, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, []mcsv1beta1.ClusterStatus{{Cluster: "south"}}, si.Status.Clusters)

	// The config file of south is removed: its endpoints go, and with them
	// the import.
	south.fwd.Restore(t)
	require.Eventually(t, func() bool { return status("south").Synced }, waitFor, 50*time.Millisecond)
	start := time.Now()
	dir.unmount(t, south)
	require.Eventually(t, func() bool {
		_, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return len(k.slicesOf(t, "shop", "web", "south")) == 0 && apierrors.IsNotFound(err)
	}, waitFor, 10*time.Millisecond)
	t.Logf("config file removed → slices and import gone after %s (measured, not asserted)", time.Since(start).Round(time.Millisecond))
}

// TestRemoteRebuiltBehindItsAddressIsListedAgain: west's clustermesh-
// apiserver is replaced by one with an empty etcd behind the same address
// (its history restarts at revision 1) and publishes a changed endpoint
// there. The importer must notice the broken connection and list again;
// resuming its watch from the old revision would wait for revisions the
// new store reaches only much later and miss the change.
func TestRemoteRebuiltBehindItsAddressIsListedAgain(t *testing.T) {
	forEachWayToReadRemotes(t, testRemoteRebuiltBehindItsAddressIsListedAgain)
}

func testRemoteRebuiltBehindItsAddressIsListedAgain(t *testing.T, runImporter runFunc) {
	k := startKube(t)
	k.namespace(t, "shop")
	west := newFakeCluster(t, "west", 2, "10.2.0.0/16", true)
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
	imp, _ := runImporter(t, k, newConfigDir(t, west), nil)
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(map[string]bool{"10.2.0.10": true}, addrsOf(k.slicesOf(t, "shop", "web", "west")))
	}, waitFor, 50*time.Millisecond)
	// The old store's history runs well ahead of what the new one reaches.
	for i := range 100 {
		west.etcd.Put(t, "unrelated/filler", strconv.Itoa(i))
	}
	failuresBefore := clusterStatus(imp, "west").Failures

	west.rebuild(t)
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.20", "")))
	west.fwd.Retarget(west.etcd.Addr)
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(map[string]bool{"10.2.0.20": true}, addrsOf(k.slicesOf(t, "shop", "web", "west")))
	}, waitFor, 50*time.Millisecond, "the rebuilt remote's endpoints were never imported: %v", addrsOf(k.slicesOf(t, "shop", "web", "west")))
	st := clusterStatus(imp, "west")
	assert.Greater(t, st.Failures, failuresBefore, "the broken connection is counted")
	assert.Contains(t, st.LastError, "connection to the remote broke")
}

// TestRefusedRemoteIsWithdrawn: west rewrites its cluster config with the
// local cluster's ID; the next session refuses it and its imports go, and
// status says why.
func TestRefusedRemoteIsWithdrawn(t *testing.T) {
	forEachWayToReadRemotes(t, func(t *testing.T, runImporter runFunc) {
		k := startKube(t)
		west, south := westAndSouth(t, k, "shop")
		west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
		south.export(t, webExport("shop", t1, []meshapi.ServicePort{portHTTP}, ep("10.3.0.10", "")))
		imp, _ := runImporter(t, k, newConfigDir(t, west, south), nil)
		require.Eventually(t, func() bool {
			return len(k.slicesOf(t, "shop", "web", "west")) == 1 && len(k.slicesOf(t, "shop", "web", "south")) == 1
		}, waitFor, 50*time.Millisecond)

		west.id = 1 // the local cluster's ID
		west.publishMeta(t)
		require.Eventually(t, func() bool { return len(k.slicesOf(t, "shop", "web", "west")) == 0 }, waitFor, 50*time.Millisecond, "the refused remote's imports stayed")
		st := clusterStatus(imp, "west")
		assert.True(t, st.Synced)
		assert.Zero(t, st.Services)
		assert.Contains(t, st.Note+" "+st.Phase, "refused")
		assert.Equal(t, map[string]bool{"10.3.0.10": true}, addrsOf(k.slicesOf(t, "shop", "web", "south")), "south stays")
	})
}

// TestLeaderElection: two importers share the Lease; only the holder
// writes, and when it stops the other takes over.
func TestLeaderElection(t *testing.T) {
	k := startKube(t)
	ctx := context.Background()
	k.namespace(t, "shop")
	k.namespace(t, "podmesh-system")
	west := newFakeCluster(t, "west", 2, "10.2.0.0/16", true)
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
	dir := newConfigDir(t, west)
	elect := func(id string) func(*Options) {
		return func(o *Options) {
			o.LeaderElection = &LeaderElection{Namespace: "podmesh-system", Name: "podmesh-service-importer", Identity: id,
				LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond}
		}
	}
	a, stopA := runImporter(t, k, dir, elect("a"))
	require.Eventually(t, func() bool { return a.Status().Leader }, waitFor, 50*time.Millisecond)
	b, _ := runImporter(t, k, dir, elect("b"))
	require.Eventually(t, func() bool {
		_, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(k.slicesOf(t, "shop", "web", "west")) == 1
	}, waitFor, 50*time.Millisecond)
	// b reads (warm standby) but never writes while a leads.
	require.Eventually(t, func() bool { return len(b.Status().Clusters) == 1 && b.Status().Clusters[0].Synced }, waitFor, 50*time.Millisecond)
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", ""), ep("10.2.0.11", "")))
	require.Eventually(t, func() bool { return len(addrsOf(k.slicesOf(t, "shop", "web", "west"))) == 2 }, waitFor, 50*time.Millisecond)
	assert.False(t, b.Status().Leader)
	assert.Zero(t, b.m.Writes(), "the standby wrote to the kube-apiserver")
	assert.NotZero(t, a.m.Writes())

	stopA() // releases the Lease
	require.Eventually(t, func() bool { return b.Status().Leader }, waitFor, 50*time.Millisecond)
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.12", "")))
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(map[string]bool{"10.2.0.12": true}, addrsOf(k.slicesOf(t, "shop", "web", "west")))
	}, waitFor, 50*time.Millisecond)
	assert.NotZero(t, b.m.Writes())
}
