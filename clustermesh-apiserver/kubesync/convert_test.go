package kubesync

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

var east = Cluster{Name: "east", ID: 7, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00:1::/48")}}

func encode(t *testing.T, v any) string {
	t.Helper()
	b, err := meshapi.Encode(v)
	require.NoError(t, err)
	return string(b)
}

func TestClusterConfigEncodesDesignShape(t *testing.T) {
	require.Equal(t,
		`{"name":"east","id":7,"podCIDRs":["10.1.0.0/16","fd00:1::/48"],"serviceCIDRs":[],"capabilities":{"endpoints":true,"services":true,"serviceExports":true},"formatVersion":1}`,
		encode(t, east.ClusterConfig()))
}

func TestNodeFor(t *testing.T) {
	node := func(addrs []corev1.NodeAddress, cidr string, cidrs ...string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: cidrs}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	internal := func(ips ...string) []corev1.NodeAddress {
		out := []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "n1"}, {Type: corev1.NodeExternalIP, Address: "203.0.113.1"}}
		for _, ip := range ips {
			out = append(out, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
		}
		return out
	}
	cases := []struct {
		name   string
		node   *corev1.Node
		want   string
		reason string
	}{
		{"dual stack", node(internal("192.168.1.10", "fd00:99::10"), "10.1.1.0/24", "10.1.1.0/24", "fd00:1:0:1::/64"),
			`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10","fd00:99::10"],"podCIDRs":["10.1.1.0/24","fd00:1:0:1::/64"]}`, ""},
		{"legacy podCIDR only", node(internal("192.168.1.10"), "10.1.1.0/24"),
			`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":["10.1.1.0/24"]}`, ""},
		{"no pod CIDR yet", node(internal("192.168.1.10"), ""),
			`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":[]}`, ""},
		{"duplicate internal IP listed once", node(internal("192.168.1.10", "192.168.1.10"), ""),
			`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":[]}`, ""},
		{"no internal IP", node(internal(), "10.1.1.0/24"), "", ReasonNoInternalIP},
		{"pod CIDR outside the cluster", node(internal("192.168.1.10"), "10.9.0.0/24", "10.9.0.0/24"), "", ReasonCIDROutside},
		{"pod CIDR broader than the cluster's", node(internal("192.168.1.10"), "10.0.0.0/8", "10.0.0.0/8"), "", ReasonCIDROutside},
		{"one of two pod CIDRs outside", node(internal("192.168.1.10"), "10.1.1.0/24", "10.1.1.0/24", "fd00:2::/64"), "", ReasonCIDROutside},
		{"unparsable address", node(internal("not-an-ip"), ""), "", ReasonUnparsableAddr},
		{"loopback internal IP", node(internal("127.0.0.1"), ""), "", ReasonInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := east.NodeFor(tc.node)
			require.Equal(t, tc.reason, reason)
			if tc.want == "" {
				require.Nil(t, got)
				return
			}
			require.Equal(t, tc.want, encode(t, got))
		})
	}
}

func TestEndpointFor(t *testing.T) {
	pod := func(mod func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0"},
			Spec:       corev1.PodSpec{NodeName: "n1", Hostname: "web-0", Subdomain: "web"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.1.5", PodIPs: []corev1.PodIP{{IP: "10.1.1.5"}, {IP: "fd00:1:0:1::5"}}},
		}
		if mod != nil {
			mod(p)
		}
		return p
	}
	cases := []struct {
		name   string
		pod    *corev1.Pod
		want   string
		reason string
	}{
		{"dual stack", pod(nil),
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web-0","node":"n1","ips":["10.1.1.5","fd00:1:0:1::5"],"hostname":"web-0","subdomain":"web"}`, ""},
		{"podIP only", pod(func(p *corev1.Pod) { p.Status.PodIPs = nil; p.Spec.Hostname, p.Spec.Subdomain = "", "" }),
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web-0","node":"n1","ips":["10.1.1.5"],"hostname":"","subdomain":""}`, ""},
		{"pending without IP", pod(func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }), "", ReasonNoIP},
		{"host network", pod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), "", ReasonHostNetwork},
		{"succeeded", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), "", ReasonFinished},
		{"failed", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), "", ReasonFinished},
		{"IP outside the cluster", pod(func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.2.0.5"}} }), "", ReasonIPOutside},
		{"second IP outside the cluster", pod(func(p *corev1.Pod) { p.Status.PodIPs[1].IP = "fd00:2::5" }), "", ReasonIPOutside},
		{"unparsable IP", pod(func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "x"}} }), "", ReasonUnparsableAddr},
		{"not scheduled", pod(func(p *corev1.Pod) { p.Spec.NodeName = "" }), "", ReasonInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := east.EndpointFor(tc.pod)
			require.Equal(t, tc.reason, reason)
			if tc.want == "" {
				require.Nil(t, got)
				return
			}
			require.Equal(t, tc.want, encode(t, got))
		})
	}
}

func TestServiceFor(t *testing.T) {
	yes, no := true, false
	node, host, zone := "n1", "web-0", "eu-1a"
	exported := time.Date(2026, 11, 30, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", SessionAffinity: corev1.ServiceAffinityNone,
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, AppProtocol: ptr.To("kubernetes.io/h2c")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}},
	}
	pod := func(name string) *corev1.ObjectReference {
		return &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: name}
	}
	v4 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"10.1.1.9"}, NodeName: &node, TargetRef: pod("web-1"), Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &no}},
		{Addresses: []string{"10.1.1.10"}, NodeName: &node, Zone: &zone, Hostname: &host, TargetRef: pod("web-0"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		// Terminating but still serving, as during a graceful shutdown.
		{Addresses: []string{"10.1.1.11"}, NodeName: &node, TargetRef: pod("web-2"), Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
		// Outside the cluster's pod CIDRs (a host-network backend): left out.
		{Addresses: []string{"192.168.1.10"}, NodeName: &node, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		// Not a pod.
		{Addresses: []string{"10.1.1.12"}, TargetRef: &corev1.ObjectReference{Kind: "Node", Name: "n1"}},
	}}
	// A second slice repeating one address (e.g. during a slice migration).
	dup := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"10.1.1.9"}, NodeName: &node, TargetRef: pod("web-1"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
	}}
	v6 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv6, Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"fd00:1::9"}, NodeName: &node, TargetRef: pod("web-1"), Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &no}},
	}}
	// A slice whose ports say what the backends serve: the target ports.
	ported := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](5353)}, // other protocol: not dns/UDP's
			{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)},
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](1053)},
		},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.1.20"}, NodeName: &node, TargetRef: pod("web-3"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}}}}
	fqdn := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}}
	headless := svc.DeepCopy()
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	affinity := svc.DeepCopy()
	affinity.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	affinity.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	external := svc.DeepCopy()
	external.Spec.Type = corev1.ServiceTypeExternalName
	tooMany := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4}
	for i := range meshapi.MaxServiceEndpoints + 1 {
		tooMany.Endpoints = append(tooMany.Endpoints, discoveryv1.Endpoint{Addresses: []string{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}).String()}})
	}

	const ports = `"ports":[{"name":"http","port":80,"protocol":"TCP","appProtocol":"kubernetes.io/h2c"},{"name":"dns","port":53,"protocol":"UDP"}]`
	const tail = `"exportTime":"2026-11-30T02:04:05Z",`
	cases := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   string
		reason string
	}{
		{"no endpoints", svc, nil,
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":false,` + ports + `,"endpoints":[],` +
				tail + `"type":"ClusterSetIP","sessionAffinity":"None","ipFamilies":["IPv4","IPv6"]}`, ""},
		{"conditions copied, sorted, deduplicated, foreign addresses left out", headless, []*discoveryv1.EndpointSlice{v4, dup, v6, fqdn},
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":true,` + ports + `,"endpoints":[` +
				`{"ip":"10.1.1.9","hostname":"","node":"n1","ready":true,"serving":true,"pod":"web-1"},` +
				`{"ip":"10.1.1.10","hostname":"web-0","node":"n1","ready":true,"serving":true,"zone":"eu-1a","pod":"web-0"},` +
				`{"ip":"10.1.1.11","hostname":"","node":"n1","ready":false,"serving":true,"terminating":true,"pod":"web-2"},` +
				`{"ip":"10.1.1.12","hostname":"","node":"","ready":true,"serving":true},` +
				`{"ip":"fd00:1::9","hostname":"","node":"n1","ready":false,"pod":"web-1"}],` +
				tail + `"type":"Headless","sessionAffinity":"None","ipFamilies":["IPv4","IPv6"]}`, ""},
		{"target ports from the slices' ports of the same name and protocol", svc, []*discoveryv1.EndpointSlice{ported},
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":false,` +
				`"ports":[{"name":"http","port":80,"protocol":"TCP","appProtocol":"kubernetes.io/h2c","targetPort":8080},{"name":"dns","port":53,"protocol":"UDP","targetPort":1053}],` +
				`"endpoints":[{"ip":"10.1.1.20","hostname":"","node":"n1","ready":true,"serving":true,"pod":"web-3"}],` +
				tail + `"type":"ClusterSetIP","sessionAffinity":"None","ipFamilies":["IPv4","IPv6"]}`, ""},
		{"client IP affinity", affinity, nil,
			`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":false,` + ports + `,"endpoints":[],` +
				tail + `"type":"ClusterSetIP","sessionAffinity":"ClientIP","sessionAffinityTimeoutSeconds":600,"ipFamilies":["IPv4","IPv6"]}`, ""},
		{"external name", external, nil, "", ReasonExternalName},
		{"more endpoints than the wire format allows", svc, []*discoveryv1.EndpointSlice{tooMany}, "", ReasonInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := east.ServiceFor(exported, tc.svc, tc.slices)
			require.Equal(t, tc.reason, reason)
			if tc.want == "" {
				require.Nil(t, got)
				return
			}
			require.Equal(t, tc.want, encode(t, got))
			_, err := meshapi.DecodeService([]byte(tc.want))
			require.NoError(t, err, "what is published decodes")
		})
	}
}
