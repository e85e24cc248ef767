package meshapi

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func mustAddrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestKeysRoundTrip(t *testing.T) {
	require.Equal(t, "podmesh/v1/cluster-config/east", ClusterConfigKey("east"))
	require.Equal(t, "podmesh/v1/heartbeat/east", HeartbeatKey("east"))
	require.Equal(t, "podmesh/v1/synced/east/nodes", SyncedKey("east", KindNodes))
	require.Equal(t, "podmesh/v1/services/east/default/web", ServiceKey("east", "default", "web"))

	n, err := ParseNodeKey(NodeKey("east", "ip-10-0-0-1.ec2.internal"))
	require.NoError(t, err)
	require.Equal(t, NodeKeyParts{Cluster: "east", Node: "ip-10-0-0-1.ec2.internal"}, n)

	e, err := ParseEndpointKey(EndpointKey("east", "default", "web-0"))
	require.NoError(t, err)
	require.Equal(t, ObjectKeyParts{Cluster: "east", Namespace: "default", Name: "web-0"}, e)

	s, err := ParseServiceKey(ServiceKey("east", "default", "web"))
	require.NoError(t, err)
	require.Equal(t, ObjectKeyParts{Cluster: "east", Namespace: "default", Name: "web"}, s)
}

func TestParseKeyRejects(t *testing.T) {
	for _, key := range []string{
		"podmesh/v1/nodes/east",                               // too few segments
		"podmesh/v1/nodes/east/n1/extra",                      // too many
		"podmesh/v1/nodes/East/n1",                            // cluster not a DNS label
		"podmesh/v1/nodes/east/",                              // empty node
		"podmesh/v1/endpoints/east/n1",                        // wrong prefix for a node key
		"podmesh/v2/nodes/east/n1",                            // another format version
		"podmesh/v1/nodes/" + strings.Repeat("a", 33) + "/n1", // cluster name too long
	} {
		_, err := ParseNodeKey(key)
		require.Error(t, err, key)
	}
	for _, key := range []string{
		"podmesh/v1/endpoints/east/default",
		"podmesh/v1/endpoints/east/default/web/x",
		"podmesh/v1/endpoints/east/Default/web",
		"podmesh/v1/endpoints/east//web",
	} {
		_, err := ParseEndpointKey(key)
		require.Error(t, err, key)
	}
}

// The exact JSON of DESIGN §3 is the contract between clusters: a change here
// is a wire-format change.
func TestEncodeIsTheWireFormat(t *testing.T) {
	cfg := ClusterConfig{
		Name: "east", ID: 1,
		PodCIDRs:      mustPrefixes("10.1.0.0/16", "fd00:1::/48"),
		ServiceCIDRs:  mustPrefixes("10.96.0.0/16"),
		Capabilities:  Capabilities{Endpoints: true, Services: true},
		FormatVersion: FormatVersion,
	}
	b, err := Encode(cfg)
	require.NoError(t, err)
	require.Equal(t, `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16","fd00:1::/48"],"serviceCIDRs":["10.96.0.0/16"],"capabilities":{"endpoints":true,"services":true},"formatVersion":1}`, string(b))

	node := Node{Cluster: "east", ClusterID: 1, Name: "n1", InternalIPs: mustAddrs("192.168.1.10"), PodCIDRs: mustPrefixes("10.1.0.0/24")}
	b, err = Encode(node)
	require.NoError(t, err)
	require.Equal(t, `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":["10.1.0.0/24"]}`, string(b))

	ep := Endpoint{Cluster: "east", ClusterID: 1, Namespace: "db", Name: "pg-0", Node: "n1", IPs: mustAddrs("10.1.0.7", "fd00:1::7"), Hostname: "pg-0", Subdomain: "pg"}
	b, err = Encode(ep)
	require.NoError(t, err)
	require.Equal(t, `{"cluster":"east","clusterID":1,"namespace":"db","name":"pg-0","node":"n1","ips":["10.1.0.7","fd00:1::7"],"hostname":"pg-0","subdomain":"pg"}`, string(b))

	svc := Service{Cluster: "east", ClusterID: 1, Namespace: "db", Name: "pg", Headless: true,
		Ports:     []ServicePort{{Name: "sql", Port: 5432, Protocol: "TCP"}},
		Endpoints: []ServiceEndpoint{{IP: netip.MustParseAddr("10.1.0.7"), Hostname: "pg-0", Node: "n1", Ready: true}}}
	b, err = Encode(svc)
	require.NoError(t, err)
	require.Equal(t, `{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","headless":true,"ports":[{"name":"sql","port":5432,"protocol":"TCP"}],"endpoints":[{"ip":"10.1.0.7","hostname":"pg-0","node":"n1","ready":true}]}`, string(b))

	// And they decode back to the same values.
	gotCfg, err := DecodeClusterConfig(mustEncode(t, cfg))
	require.NoError(t, err)
	require.Equal(t, cfg, *gotCfg)
	gotNode, err := DecodeNode(mustEncode(t, node))
	require.NoError(t, err)
	require.Equal(t, node, *gotNode)
	gotEP, err := DecodeEndpoint(mustEncode(t, ep))
	require.NoError(t, err)
	require.Equal(t, ep, *gotEP)
	gotSvc, err := DecodeService(mustEncode(t, svc))
	require.NoError(t, err)
	require.Equal(t, svc, *gotSvc)
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := Encode(v)
	require.NoError(t, err)
	return b
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	n, err := DecodeNode([]byte(`{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":["10.1.0.0/24"],"zone":"eu-1","future":{"x":1}}`))
	require.NoError(t, err)
	require.Equal(t, "n1", n.Name)
}

// TestDecodeClusterConfigEstablishedIsOptional: the established time is read
// when present, absent from older writers, and left out when zero.
func TestDecodeClusterConfigEstablishedIsOptional(t *testing.T) {
	c, err := DecodeClusterConfig([]byte(`{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1,"established":"2026-01-02T03:04:05.5Z"}`))
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC), c.Established.UTC())

	c, err = DecodeClusterConfig([]byte(`{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`))
	require.NoError(t, err)
	require.True(t, c.Established.IsZero(), "an older writer's config has no established time")
	require.NotContains(t, string(mustEncode(t, c)), "established", "a zero time is not written")
}

func TestDecodeClusterConfigRejects(t *testing.T) {
	valid := `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`
	_, err := DecodeClusterConfig([]byte(valid))
	require.NoError(t, err)

	for _, tc := range []struct {
		name, value string
		want        error
	}{
		{"missing name", `{"id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`, ErrMissingField},
		{"null pod CIDRs", `{"name":"east","id":1,"podCIDRs":null,"formatVersion":1}`, ErrMissingField},
		{"missing format version", `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"]}`, ErrMissingField},
		{"newer format version", `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":2}`, ErrUnsupported},
		{"ID zero", `{"name":"east","id":0,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`, ErrInvalidName},
		{"ID 256", `{"name":"east","id":256,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`, ErrInvalidName},
		{"upper-case name", `{"name":"East","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1}`, ErrInvalidName},
		{"default route", `{"name":"east","id":1,"podCIDRs":["0.0.0.0/0"],"formatVersion":1}`, ErrInvalidPrefix},
		{"IPv6 default route", `{"name":"east","id":1,"podCIDRs":["::/0"],"formatVersion":1}`, ErrInvalidPrefix},
		{"too broad", `{"name":"east","id":1,"podCIDRs":["10.0.0.0/7"],"formatVersion":1}`, ErrInvalidPrefix},
		{"not canonical", `{"name":"east","id":1,"podCIDRs":["10.1.0.7/16"],"formatVersion":1}`, ErrInvalidPrefix},
		{"overlapping own CIDRs", `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16","10.1.4.0/24"],"formatVersion":1}`, ErrInvalidPrefix},
		{"no pod CIDR", `{"name":"east","id":1,"podCIDRs":[],"formatVersion":1}`, ErrInvalidPrefix},
		{"loopback", `{"name":"east","id":1,"podCIDRs":["127.0.0.0/8"],"formatVersion":1}`, ErrInvalidPrefix},
		{"multicast", `{"name":"east","id":1,"podCIDRs":["224.0.0.0/8"],"formatVersion":1}`, ErrInvalidPrefix},
		{"ID as string", `{"name":"east","id":"1","podCIDRs":["10.1.0.0/16"],"formatVersion":1}`, nil},
		{"garbage", `{"name":`, nil},
		{"oversized", `{"name":"east","pad":"` + strings.Repeat("x", MaxValueSize) + `"}`, ErrTooLarge},
		{"established not a time", `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1,"established":"yesterday"}`, nil},
		{"established before 2000", `{"name":"east","id":1,"podCIDRs":["10.1.0.0/16"],"formatVersion":1,"established":"1970-01-01T00:00:01Z"}`, ErrOutOfRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeClusterConfig([]byte(tc.value))
			require.Error(t, err)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
			}
		})
	}
}

func TestDecodeNodeAndEndpointReject(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		decode      func([]byte) error
		want        error
	}{
		{"node without internal IP", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":[],"podCIDRs":[]}`, decodeNode, ErrMissingField},
		{"node with loopback IP", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["127.0.0.1"],"podCIDRs":[]}`, decodeNode, ErrInvalidAddress},
		{"node with zone", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["fe80::1%eth0"],"podCIDRs":[]}`, decodeNode, ErrInvalidAddress},
		{"node with mapped IPv4", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["::ffff:10.0.0.1"],"podCIDRs":[]}`, decodeNode, ErrInvalidAddress},
		{"node with too many CIDRs", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["10.0.0.1"],"podCIDRs":["10.1.0.0/24","10.1.1.0/24","10.1.2.0/24","10.1.3.0/24","10.1.4.0/24","10.1.5.0/24","10.1.6.0/24","10.1.7.0/24","10.1.8.0/24"]}`, decodeNode, ErrTooLarge},
		{"node missing podCIDRs", `{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["10.0.0.1"]}`, decodeNode, ErrMissingField},
		{"node with slash in name", `{"cluster":"east","clusterID":1,"name":"a/b","internalIPs":["10.0.0.1"],"podCIDRs":[]}`, decodeNode, ErrInvalidName},
		{"endpoint without IP", `{"cluster":"east","clusterID":1,"namespace":"d","name":"p","node":"n1","ips":[]}`, decodeEndpoint, ErrMissingField},
		{"endpoint with broadcast IP", `{"cluster":"east","clusterID":1,"namespace":"d","name":"p","node":"n1","ips":["255.255.255.255"]}`, decodeEndpoint, ErrInvalidAddress},
		{"endpoint with bad hostname", `{"cluster":"east","clusterID":1,"namespace":"d","name":"p","node":"n1","ips":["10.1.0.1"],"hostname":"A_B"}`, decodeEndpoint, ErrInvalidName},
		{"endpoint missing node", `{"cluster":"east","clusterID":1,"namespace":"d","name":"p","ips":["10.1.0.1"]}`, decodeEndpoint, ErrMissingField},
		{"service with port 0", `{"cluster":"east","clusterID":1,"namespace":"d","name":"s","ports":[{"port":0}]}`, decodeService, ErrInvalidAddress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.decode([]byte(tc.value))
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func decodeNode(b []byte) error     { _, err := DecodeNode(b); return err }
func decodeEndpoint(b []byte) error { _, err := DecodeEndpoint(b); return err }
func decodeService(b []byte) error  { _, err := DecodeService(b); return err }

func TestValidateAgainstTheClusterConfig(t *testing.T) {
	cfg := &ClusterConfig{Name: "east", ID: 1, PodCIDRs: mustPrefixes("10.1.0.0/16", "fd00:1::/48"), FormatVersion: 1}
	node := func(mut func(*Node)) *Node {
		n := &Node{Cluster: "east", ClusterID: 1, Name: "n1", InternalIPs: mustAddrs("192.168.0.1"), PodCIDRs: mustPrefixes("10.1.3.0/24", "fd00:1:0:3::/64")}
		if mut != nil {
			mut(n)
		}
		return n
	}
	key := NodeKeyParts{Cluster: "east", Node: "n1"}
	require.NoError(t, ValidateNodeFor(key, node(nil), cfg))
	for name, tc := range map[string]struct {
		key  NodeKeyParts
		node *Node
		want error
	}{
		"value names another cluster": {key, node(func(n *Node) { n.Cluster = "west" }), ErrMismatch},
		"key names another cluster":   {NodeKeyParts{Cluster: "west", Node: "n1"}, node(nil), ErrMismatch},
		"key names another node":      {NodeKeyParts{Cluster: "east", Node: "n2"}, node(nil), ErrMismatch},
		"wrong cluster ID":            {key, node(func(n *Node) { n.ClusterID = 2 }), ErrMismatch},
		"pod CIDR outside":            {key, node(func(n *Node) { n.PodCIDRs = mustPrefixes("10.2.0.0/24") }), ErrOutOfRange},
		"pod CIDR wider than cluster": {key, node(func(n *Node) { n.PodCIDRs = mustPrefixes("10.0.0.0/8") }), ErrOutOfRange},
		"IPv6 pod CIDR outside":       {key, node(func(n *Node) { n.PodCIDRs = mustPrefixes("fd00:2::/64") }), ErrOutOfRange},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorIs(t, ValidateNodeFor(tc.key, tc.node, cfg), tc.want)
		})
	}

	ep := &Endpoint{Cluster: "east", ClusterID: 1, Namespace: "d", Name: "p", Node: "n1", IPs: mustAddrs("10.1.3.7", "fd00:1::7")}
	epKey := ObjectKeyParts{Cluster: "east", Namespace: "d", Name: "p"}
	require.NoError(t, ValidateEndpointFor(epKey, ep, cfg))
	outside := *ep
	outside.IPs = mustAddrs("10.2.0.7")
	require.ErrorIs(t, ValidateEndpointFor(epKey, &outside, cfg), ErrOutOfRange)
	require.ErrorIs(t, ValidateEndpointFor(ObjectKeyParts{Cluster: "east", Namespace: "d", Name: "q"}, ep, cfg), ErrMismatch)
	wrongID := *ep
	wrongID.ClusterID = 9
	require.ErrorIs(t, ValidateEndpointFor(epKey, &wrongID, cfg), ErrMismatch)
}

func TestPrefixHelpers(t *testing.T) {
	outer := mustPrefixes("10.1.0.0/16", "fd00:1::/48")
	for _, tc := range []struct {
		p    string
		want bool
	}{
		{"10.1.0.0/16", true},
		{"10.1.2.0/24", true},
		{"10.1.2.3/32", true},
		{"10.0.0.0/8", false},
		{"10.2.0.0/24", false},
		{"fd00:1:0:5::/64", true},
		{"fd00::/16", false},
	} {
		require.Equal(t, tc.want, PrefixWithin(netip.MustParsePrefix(tc.p), outer), tc.p)
	}
	require.True(t, AddrWithin(netip.MustParseAddr("fd00:1::1"), outer))
	require.False(t, AddrWithin(netip.MustParseAddr("10.3.0.1"), outer))

	a, b, ok := Overlap(mustPrefixes("10.1.0.0/16"), mustPrefixes("10.0.0.0/8"))
	require.True(t, ok)
	require.Equal(t, "10.1.0.0/16", a.String())
	require.Equal(t, "10.0.0.0/8", b.String())
	_, _, ok = Overlap(mustPrefixes("10.1.0.0/16"), mustPrefixes("10.2.0.0/16", "fd00::/48"))
	require.False(t, ok)

	require.Equal(t, "10.1.2.3/32", HostPrefix(netip.MustParseAddr("10.1.2.3")).String())
	require.Equal(t, "fd00::1/128", HostPrefix(netip.MustParseAddr("fd00::1")).String())
}

func TestTimeRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 21, 23, 0, 0, 123, time.UTC)
	got, err := ParseTime([]byte(FormatTime(now)))
	require.NoError(t, err)
	require.True(t, now.Equal(got))
	_, err = ParseTime([]byte("yesterday"))
	require.Error(t, err)
	_, err = ParseTime([]byte(strings.Repeat("9", 100)))
	require.True(t, errors.Is(err, ErrTooLarge))
}
