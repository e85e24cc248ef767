package meshapi

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// The decoders read values written by other, untrusted clusters. The fuzz
// targets check that no input panics, and that whatever a decoder accepts
// also passes its own validation again after a round trip through Encode —
// so the encoder and the decoder agree on what is valid.

func FuzzDecodeClusterConfig(f *testing.F) {
	f.Add([]byte(`{"name":"east","id":1,"podCIDRs":["10.1.0.0/16","fd00:1::/48"],"serviceCIDRs":[],"capabilities":{},"formatVersion":1}`))
	f.Add([]byte(`{"name":"east","id":1,"podCIDRs":["0.0.0.0/0"],"formatVersion":1}`))
	f.Add([]byte(`{"name":"e","id":255,"podCIDRs":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeClusterConfig(data)
		if err != nil {
			return
		}
		roundTrip(t, c, func(b []byte) error { _, err := DecodeClusterConfig(b); return err })
		for _, p := range c.PodCIDRs {
			if p.Bits() == 0 || p.Masked() != p {
				t.Fatalf("accepted pod CIDR %s", p)
			}
		}
	})
}

func FuzzDecodeNode(f *testing.F) {
	f.Add([]byte(`{"cluster":"east","clusterID":1,"name":"n1","internalIPs":["192.168.1.10","fd00::1"],"podCIDRs":["10.1.0.0/24"]}`))
	f.Add([]byte(`{"cluster":"east","clusterID":1,"name":"a.b","internalIPs":["::ffff:1.2.3.4"],"podCIDRs":["10.1.0.1/24"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := DecodeNode(data)
		if err != nil {
			return
		}
		roundTrip(t, n, func(b []byte) error { _, err := DecodeNode(b); return err })
		if _, err := ParseNodeKey(NodeKey(n.Cluster, n.Name)); err != nil {
			t.Fatalf("accepted node %q whose key does not parse: %v", n.Name, err)
		}
	})
}

func FuzzDecodeEndpoint(f *testing.F) {
	f.Add([]byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg-0","node":"n1","ips":["10.1.0.7"],"hostname":"pg-0","subdomain":"pg"}`))
	f.Add([]byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg-0","node":"n1","ips":["fe80::1%lo"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEndpoint(data)
		if err != nil {
			return
		}
		roundTrip(t, e, func(b []byte) error { _, err := DecodeEndpoint(b); return err })
		if _, err := ParseEndpointKey(EndpointKey(e.Cluster, e.Namespace, e.Name)); err != nil {
			t.Fatalf("accepted endpoint %s/%s whose key does not parse: %v", e.Namespace, e.Name, err)
		}
	})
}

func FuzzDecodeService(f *testing.F) {
	f.Add([]byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","headless":true,"ports":[{"name":"sql","port":5432,"protocol":"TCP"}],"endpoints":[{"ip":"10.1.0.7","hostname":"pg-0","node":"n1","ready":true}]}`))
	f.Add([]byte(serviceFormat1))
	f.Add([]byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","headless":false,"ports":[{"name":"h","port":80,"protocol":"TCP","appProtocol":"kubernetes.io/h2c"}],` +
		`"endpoints":[{"ip":"fd00::7","hostname":"","node":"n1","ready":true,"serving":true,"zone":"z1","pod":"web-1"}],` +
		`"exportTime":"2026-11-30T03:04:05Z","type":"ClusterSetIP","sessionAffinity":"ClientIP","sessionAffinityTimeoutSeconds":30,"ipFamilies":["IPv6","IPv4"]}`))
	f.Add([]byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","type":"Headless","headless":true,"exportTime":"0001-01-01T00:00:00Z","ipFamilies":["IPv4","IPv4"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeService(data)
		if err != nil {
			return
		}
		roundTrip(t, s, func(b []byte) error { _, err := DecodeService(b); return err })
		if _, err := ParseServiceKey(ServiceKey(s.Cluster, s.Namespace, s.Name)); err != nil {
			t.Fatalf("accepted service %s/%s whose key does not parse: %v", s.Namespace, s.Name, err)
		}
		// What an importer relies on, whatever the bytes were.
		if s.Type != "" && (s.ExportTime.IsZero() || s.Headless != (s.Type == ServiceTypeHeadless)) {
			t.Fatalf("accepted inconsistent format-2 value: type %q headless %t export time %v", s.Type, s.Headless, s.ExportTime)
		}
		for _, p := range s.Ports {
			if p.Port < 1 || p.Port > 65535 || (p.Protocol != ProtocolTCP && p.Protocol != ProtocolUDP && p.Protocol != ProtocolSCTP) {
				t.Fatalf("accepted port %+v", p)
			}
		}
		for _, ep := range s.Endpoints {
			if strings.ContainsAny(ep.Hostname+ep.Pod+ep.Node+ep.Zone, "/ \x00") {
				t.Fatalf("accepted endpoint names %+v", ep)
			}
		}
		// A format-1 reader decodes whatever this decoder accepts.
		var old serviceV1
		if err := json.Unmarshal(mustEncode(t, s), &old); err != nil {
			t.Fatalf("a format-1 reader cannot decode an accepted value: %v", err)
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	f.Add("podmesh/v1/nodes/east/n1")
	f.Add("podmesh/v1/endpoints/east/default/web-0")
	f.Add("podmesh/v1/nodes//")
	f.Fuzz(func(t *testing.T, key string) {
		if n, err := ParseNodeKey(key); err == nil && NodeKey(n.Cluster, n.Node) != key {
			t.Fatalf("node key %q parsed to %+v which renders differently", key, n)
		}
		if o, err := ParseEndpointKey(key); err == nil && EndpointKey(o.Cluster, o.Namespace, o.Name) != key {
			t.Fatalf("endpoint key %q parsed to %+v which renders differently", key, o)
		}
	})
}

func roundTrip(t *testing.T, v any, decode func([]byte) error) {
	t.Helper()
	b, err := Encode(v)
	if err != nil {
		t.Fatalf("encode accepted value: %v", err)
	}
	if err := decode(b); err != nil {
		t.Fatalf("accepted value does not decode after a round trip: %v\n%s", err, b)
	}
}

// FuzzValidateAgainstClusterConfig runs a remote's key and value through
// the checks an agent applies before anything reaches the kernel: decode,
// then validate against the key it arrived under and the config its cluster
// declared. Whatever passes must belong to that cluster and lie inside its
// pod CIDRs, so a remote can never claim another cluster's addresses.
func FuzzValidateAgainstClusterConfig(f *testing.F) {
	f.Add("podmesh/v1/nodes/west/n1", []byte(`{"cluster":"west","clusterID":2,"name":"n1","internalIPs":["192.168.2.11"],"podCIDRs":["10.2.1.0/24","fd00:2:0:1::/64"]}`))
	f.Add("podmesh/v1/nodes/west/n1", []byte(`{"cluster":"west","clusterID":2,"name":"n1","internalIPs":["192.168.2.11"],"podCIDRs":["10.1.0.0/24"]}`))
	f.Add("podmesh/v1/endpoints/west/db/pg-0", []byte(`{"cluster":"west","clusterID":2,"namespace":"db","name":"pg-0","node":"n1","ips":["10.2.1.7"]}`))
	f.Add("podmesh/v1/endpoints/west/db/pg-0", []byte(`{"cluster":"east","clusterID":1,"namespace":"db","name":"pg-0","node":"n1","ips":["10.1.1.7"]}`))
	cfg := &ClusterConfig{Name: "west", ID: 2, FormatVersion: FormatVersion,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}}
	f.Fuzz(func(t *testing.T, key string, data []byte) {
		if parts, err := ParseNodeKey(key); err == nil {
			n, err := DecodeNode(data)
			if err != nil || ValidateNodeFor(parts, n, cfg) != nil {
				return
			}
			if n.Cluster != cfg.Name || n.ClusterID != cfg.ID || n.Name != parts.Node {
				t.Fatalf("accepted node %+v under %s", n, key)
			}
			for _, p := range n.PodCIDRs {
				if !PrefixWithin(p, cfg.PodCIDRs) {
					t.Fatalf("accepted node pod CIDR %s outside %v", p, cfg.PodCIDRs)
				}
			}
		}
		if parts, err := ParseEndpointKey(key); err == nil {
			e, err := DecodeEndpoint(data)
			if err != nil || ValidateEndpointFor(parts, e, cfg) != nil {
				return
			}
			if e.Cluster != cfg.Name || e.ClusterID != cfg.ID || e.Namespace != parts.Namespace || e.Name != parts.Name {
				t.Fatalf("accepted endpoint %+v under %s", e, key)
			}
			for _, ip := range e.IPs {
				if !AddrWithin(ip, cfg.PodCIDRs) {
					t.Fatalf("accepted endpoint IP %s outside %v", ip, cfg.PodCIDRs)
				}
			}
		}
	})
}
