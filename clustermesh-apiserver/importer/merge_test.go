package importer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

func exp(cluster string, at time.Time, typ string, ports ...meshapi.ServicePort) *Export {
	return &Export{Cluster: cluster, Key: Key{"ns", "svc"}, Time: at, Type: typ, Ports: ports, SessionAffinity: "None"}
}

func TestMergeOldestExportWins(t *testing.T) {
	http := meshapi.ServicePort{Name: "http", Port: 80, Protocol: "TCP"}
	https := meshapi.ServicePort{Name: "https", Port: 443, Protocol: "TCP"}
	for _, tc := range []struct {
		name     string
		exports  []*Export
		typ      string
		ports    []meshapi.ServicePort
		clusters []string
		reasons  []string
	}{
		{"one export", []*Export{exp("a", t0, "ClusterSetIP", http)}, "ClusterSetIP", []meshapi.ServicePort{http}, []string{"a"}, nil},
		{"ports are the union", []*Export{exp("b", t1, "ClusterSetIP", https), exp("a", t0, "ClusterSetIP", http)},
			"ClusterSetIP", []meshapi.ServicePort{http, https}, []string{"a", "b"}, nil},
		{"same port twice is no conflict", []*Export{exp("a", t0, "ClusterSetIP", http), exp("b", t1, "ClusterSetIP", http)},
			"ClusterSetIP", []meshapi.ServicePort{http}, []string{"a", "b"}, nil},
		{"a newer type loses and is left out", []*Export{exp("b", t1, "Headless", http), exp("a", t0, "ClusterSetIP", http)},
			"ClusterSetIP", []meshapi.ServicePort{http}, []string{"a"}, []string{ReasonTypeConflict}},
		{"an older headless export wins", []*Export{exp("b", t1, "ClusterSetIP", http), exp("a", t0, "Headless", http)},
			"Headless", []meshapi.ServicePort{http}, []string{"a"}, []string{ReasonTypeConflict}},
		{"same name, other number", []*Export{exp("a", t0, "ClusterSetIP", http), exp("b", t1, "ClusterSetIP", meshapi.ServicePort{Name: "http", Port: 8080, Protocol: "TCP"})},
			"ClusterSetIP", []meshapi.ServicePort{http}, []string{"a", "b"}, []string{ReasonPortConflict}},
		{"same number, other name", []*Export{exp("a", t0, "ClusterSetIP", http), exp("b", t1, "ClusterSetIP", meshapi.ServicePort{Name: "web", Port: 80, Protocol: "TCP"})},
			"ClusterSetIP", []meshapi.ServicePort{http}, []string{"a", "b"}, []string{ReasonPortConflict}},
		{"same number, other protocol is another port", []*Export{exp("a", t0, "ClusterSetIP", http), exp("b", t1, "ClusterSetIP", meshapi.ServicePort{Name: "dns", Port: 80, Protocol: "UDP"})},
			"ClusterSetIP", []meshapi.ServicePort{http, {Name: "dns", Port: 80, Protocol: "UDP"}}, []string{"a", "b"}, nil},
		{"a tie is broken by cluster name", []*Export{exp("b", t0, "Headless", http), exp("a", t0, "ClusterSetIP", http)},
			"ClusterSetIP", []meshapi.ServicePort{http}, []string{"a"}, []string{ReasonTypeConflict}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := Merge(tc.exports)
			require.NotNil(t, m)
			assert.Equal(t, tc.typ, m.Type)
			assert.Equal(t, tc.ports, m.Ports)
			assert.Equal(t, tc.clusters, m.Clusters)
			assert.Equal(t, tc.reasons, m.Reasons)
			if tc.reasons == nil {
				assert.Equal(t, ReasonNoConflicts, m.Conflict())
			} else {
				assert.NotEmpty(t, m.Message)
			}
		})
	}
	assert.Nil(t, Merge(nil))
}

func TestMergeSessionAffinityConflicts(t *testing.T) {
	a := exp("a", t0, "ClusterSetIP")
	a.SessionAffinity, a.AffinityTimeout = "ClientIP", 100
	b := exp("b", t1, "ClusterSetIP")
	assert.Equal(t, []string{ReasonSessionAffinityConflict}, Merge([]*Export{a, b}).Reasons)
	b.SessionAffinity, b.AffinityTimeout = "ClientIP", 200
	m := Merge([]*Export{b, a})
	assert.Equal(t, []string{ReasonSessionAffinityConfigConflict}, m.Reasons)
	assert.Equal(t, int32(100), m.AffinityTimeout, "the oldest export's")
}

// TestDerivedNameIsTheReferences pins the mcs-api reference naming.
func TestDerivedNameIsTheReferences(t *testing.T) {
	n := DerivedName("shop", "web")
	assert.Regexp(t, `^derived-[0-9a-v]{10}$`, n)
	assert.Equal(t, n, DerivedName("shop", "web"))
	assert.NotEqual(t, n, DerivedName("shop", "db"))
	assert.NotEqual(t, n, DerivedName("sho", "pweb"), "the namespace/name separator is hashed")
}

func TestExportFromRefusesAndDrops(t *testing.T) {
	cfg := &meshapi.ClusterConfig{Name: "west", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, FormatVersion: 1}
	parts := meshapi.ObjectKeyParts{Cluster: "west", Namespace: "shop", Name: "web"}
	good := func() *meshapi.Service {
		return &meshapi.Service{Cluster: "west", ClusterID: 2, Namespace: "shop", Name: "web", Type: "ClusterSetIP",
			Ports: []meshapi.ServicePort{portHTTP}, Endpoints: []meshapi.ServiceEndpoint{ep("10.2.0.1", "")}}
	}
	e, dropped, err := ExportFrom(parts, good(), cfg)
	require.NoError(t, err)
	assert.Empty(t, dropped)
	assert.Len(t, e.Endpoints, 1)

	for _, tc := range []struct {
		name   string
		mutate func(*meshapi.Service)
	}{
		{"another cluster's name", func(s *meshapi.Service) { s.Cluster = "south" }},
		{"another ID", func(s *meshapi.Service) { s.ClusterID = 3 }},
		{"a name Kubernetes refuses for a Service", func(s *meshapi.Service) { s.Name = "1web" }},
		{"unknown type", func(s *meshapi.Service) { s.Type = "LoadBalancer" }},
		{"unknown protocol", func(s *meshapi.Service) { s.Ports[0].Protocol = "ICMP" }},
		{"unnamed port among several", func(s *meshapi.Service) { s.Ports = append(s.Ports, meshapi.ServicePort{Port: 81, Protocol: "TCP"}) }},
		{"bad affinity", func(s *meshapi.Service) { s.SessionAffinity = "Sticky" }},
		{"affinity timeout too long", func(s *meshapi.Service) { s.SessionAffinity, s.SessionAffinityTimeoutSeconds = "ClientIP", 86401 }},
		{"an endpoint outside the pod CIDRs", func(s *meshapi.Service) { s.Endpoints = append(s.Endpoints, ep("10.3.0.1", "")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.mutate(s)
			_, _, err := ExportFrom(parts, s, cfg)
			require.Error(t, err)
		})
	}

	s := good()
	s.Endpoints = append(s.Endpoints, ep("10.2.0.1", ""), meshapi.ServiceEndpoint{IP: netip.MustParseAddr("10.2.0.2"), Hostname: "Not_A_Label", Node: "n", Zone: "z"})
	e, dropped, err = ExportFrom(parts, s, cfg)
	require.NoError(t, err)
	require.Len(t, dropped, 1)
	assert.Equal(t, "duplicate", dropped[0].Reason)
	require.Len(t, e.Endpoints, 2)
	assert.Empty(t, e.Endpoints[1].Hostname, "an invalid hostname costs the endpoint its name, not its traffic")

	// Format 1 values (no type) read their type from headless.
	s = good()
	s.Type, s.Headless = "", true
	e, _, err = ExportFrom(parts, s, cfg)
	require.NoError(t, err)
	assert.Equal(t, meshapi.ServiceTypeHeadless, e.Type)
}

func TestTargetPortsGoIntoTheClustersSlicesOnly(t *testing.T) {
	parts := meshapi.ObjectKeyParts{Cluster: "west", Namespace: "ns", Name: "svc"}
	cfg := &meshapi.ClusterConfig{Name: "west", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, FormatVersion: meshapi.FormatVersion}
	svc := func(cluster string, id uint32, target int32) *meshapi.Service {
		return &meshapi.Service{Cluster: cluster, ClusterID: id, Namespace: "ns", Name: "svc", Type: meshapi.ServiceTypeClusterSetIP,
			ExportTime: t0, SessionAffinity: "None",
			Ports:     []meshapi.ServicePort{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: target}},
			Endpoints: []meshapi.ServiceEndpoint{{IP: netip.MustParseAddr("10.2.0.5"), Ready: true}}}
	}
	west, _, err := ExportFrom(parts, svc("west", 2, 8080), cfg)
	require.NoError(t, err)
	http := meshapi.ServicePort{Name: "http", Port: 80, Protocol: "TCP"}
	assert.Equal(t, []meshapi.ServicePort{http}, west.Ports, "the clusterset sees the service port only")

	ss := desiredSlices(west)
	require.Len(t, ss, 1)
	require.Len(t, ss[0].Ports, 1)
	assert.Equal(t, int32(8080), *ss[0].Ports[0].Port, "kube-proxy forwards to what the backends serve")
	assert.Equal(t, "http", *ss[0].Ports[0].Name, "matched to the derived Service's port by name")

	// Another cluster serving the same port on 9090 does not conflict.
	eastParts := meshapi.ObjectKeyParts{Cluster: "east", Namespace: "ns", Name: "svc"}
	eastCfg := &meshapi.ClusterConfig{Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, FormatVersion: meshapi.FormatVersion}
	east, _, err := ExportFrom(eastParts, svc("east", 1, 9090), eastCfg)
	require.NoError(t, err)
	m := Merge([]*Export{west, east})
	assert.Empty(t, m.Reasons, "target ports are each cluster's own")
	assert.Equal(t, []meshapi.ServicePort{http}, m.Ports)
	assert.Equal(t, int32(80), desiredDerivedService(m).Spec.Ports[0].Port)

	// A restarted importer rebuilds the service ports from the annotation,
	// not from the slices' target ports.
	back := exportFromSlices(west.Key, "west", ss)
	assert.Equal(t, west.Ports, back.Ports)
	assert.Equal(t, west.EndpointPorts, back.EndpointPorts)
}

func TestDesiredSlicesSplitByFamilyAndSize(t *testing.T) {
	e := exp("west", t0, "Headless", portHTTP)
	for i := range 150 {
		e.Endpoints = append(e.Endpoints, meshapi.ServiceEndpoint{IP: netip.AddrFrom4([4]byte{10, 2, byte(i / 250), byte(i%250 + 1)}), Pod: "db-" + string(rune('a'+i%26)), Ready: true})
	}
	e.Endpoints = append(e.Endpoints, meshapi.ServiceEndpoint{IP: netip.MustParseAddr("fd00::1"), Hostname: "v6", Ready: false})
	ss := desiredSlices(e)
	require.Len(t, ss, 3)
	assert.Len(t, ss[0].Endpoints, MaxEndpointsPerSlice)
	assert.Len(t, ss[1].Endpoints, 50)
	assert.Equal(t, discoveryv1.AddressTypeIPv6, ss[2].AddressType)
	assert.False(t, *ss[2].Endpoints[0].Conditions.Ready, "readiness copied")
	assert.Equal(t, "v6", *ss[2].Endpoints[0].Hostname)
	assert.Equal(t, "db-a", *ss[0].Endpoints[0].Hostname, "the pod name when there is no hostname")
	names := map[string]bool{}
	for _, s := range ss {
		assert.LessOrEqual(t, len(s.Name), 63)
		names[s.Name] = true
		assert.Equal(t, "west", s.Labels[LabelSourceCluster])
		assert.Equal(t, DerivedName("ns", "svc"), s.Labels[discoveryv1.LabelServiceName])
	}
	assert.Len(t, names, 3)

	// Round trip: a restarted importer rebuilds what merging needs.
	back := exportFromSlices(e.Key, "west", ss)
	assert.Equal(t, e.Type, back.Type)
	assert.True(t, e.Time.Equal(back.Time))
	assert.Equal(t, e.Ports, back.Ports)
}
