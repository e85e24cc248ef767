package meshapi

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A format-1 service value exactly as clusters running the previous release
// publish it (every Service, no format-2 fields).
const serviceFormat1 = `{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","headless":true,` +
	`"ports":[{"name":"sql","port":5432,"protocol":"TCP"}],` +
	`"endpoints":[{"ip":"10.1.0.7","hostname":"pg-0","node":"n1","ready":true},{"ip":"10.1.0.8","hostname":"","node":"n2","ready":false}]}`

// serviceV1 is the format-1 reader: the Service type and its parts as they
// were before format 2, decoded the way a format-1 reader decodes (unknown
// fields ignored).
type serviceV1 struct {
	Cluster   string `json:"cluster"`
	ClusterID uint32 `json:"clusterID"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Headless  bool   `json:"headless"`
	Ports     []struct {
		Name     string `json:"name"`
		Port     int32  `json:"port"`
		Protocol string `json:"protocol"`
	} `json:"ports"`
	Endpoints []struct {
		IP       netip.Addr `json:"ip"`
		Hostname string     `json:"hostname"`
		Node     string     `json:"node"`
		Ready    bool       `json:"ready"`
	} `json:"endpoints"`
}

func format2Service() Service {
	return Service{
		Cluster: "east", ClusterID: 1, Namespace: "db", Name: "pg", Headless: true,
		Ports: []ServicePort{{Name: "sql", Port: 5432, Protocol: ProtocolTCP, AppProtocol: "postgresql"}},
		Endpoints: []ServiceEndpoint{
			{IP: netip.MustParseAddr("10.1.0.7"), Hostname: "pg-0", Node: "n1", Ready: true, Serving: true, Zone: "eu-1a", Pod: "pg-0"},
			{IP: netip.MustParseAddr("fd00:1::8"), Node: "n2", Ready: false, Serving: true, Terminating: true, Zone: "eu-1b", Pod: "pg-1"},
		},
		ExportTime:      time.Date(2026, 11, 30, 3, 4, 5, 0, time.UTC),
		Type:            ServiceTypeHeadless,
		SessionAffinity: SessionAffinityClientIP, SessionAffinityTimeoutSeconds: 10800,
		IPFamilies: []string{IPFamilyIPv4, IPFamilyIPv6},
	}
}

// The exact JSON of a format-2 entry is the contract with the importers of
// other clusters: a change here is a wire-format change.
func TestServiceFormat2IsTheWireFormat(t *testing.T) {
	b := mustEncode(t, format2Service())
	require.Equal(t, `{"cluster":"east","clusterID":1,"namespace":"db","name":"pg","headless":true,`+
		`"ports":[{"name":"sql","port":5432,"protocol":"TCP","appProtocol":"postgresql"}],`+
		`"endpoints":[{"ip":"10.1.0.7","hostname":"pg-0","node":"n1","ready":true,"serving":true,"zone":"eu-1a","pod":"pg-0"},`+
		`{"ip":"fd00:1::8","hostname":"","node":"n2","ready":false,"serving":true,"terminating":true,"zone":"eu-1b","pod":"pg-1"}],`+
		`"exportTime":"2026-11-30T03:04:05Z","type":"Headless","sessionAffinity":"ClientIP","sessionAffinityTimeoutSeconds":10800,"ipFamilies":["IPv4","IPv6"]}`, string(b))
	got, err := DecodeService(b)
	require.NoError(t, err)
	require.Equal(t, format2Service(), *got)
}

// Old value → new decoder: a format-1 value decodes, validates, and has every
// format-2 field zero, so an importer can tell it apart (it also checks the
// publisher's capabilities).
func TestFormat1ServiceDecodesWithTheFormat2Decoder(t *testing.T) {
	s, err := DecodeService([]byte(serviceFormat1))
	require.NoError(t, err)
	require.Equal(t, Service{
		Cluster: "east", ClusterID: 1, Namespace: "db", Name: "pg", Headless: true,
		Ports: []ServicePort{{Name: "sql", Port: 5432, Protocol: "TCP"}},
		Endpoints: []ServiceEndpoint{
			{IP: netip.MustParseAddr("10.1.0.7"), Hostname: "pg-0", Node: "n1", Ready: true},
			{IP: netip.MustParseAddr("10.1.0.8"), Node: "n2"},
		},
	}, *s)
	require.Empty(t, s.Type)
	require.True(t, s.ExportTime.IsZero())
	// Re-encoding a format-1 value gives the format-1 bytes back: the new
	// fields are omitted when zero, so nothing new appears on the wire.
	require.Equal(t, serviceFormat1, string(mustEncode(t, s)))
}

// New value → old decoder: a format-1 reader decodes a format-2 value,
// ignoring the fields it does not know, and sees every field it knows.
func TestFormat2ServiceDecodesWithAFormat1Decoder(t *testing.T) {
	var old serviceV1
	require.NoError(t, json.Unmarshal(mustEncode(t, format2Service()), &old))
	require.Equal(t, "east", old.Cluster)
	require.Equal(t, uint32(1), old.ClusterID)
	require.Equal(t, "db", old.Namespace)
	require.Equal(t, "pg", old.Name)
	require.True(t, old.Headless)
	require.Len(t, old.Ports, 1)
	require.Equal(t, "sql", old.Ports[0].Name)
	require.Equal(t, int32(5432), old.Ports[0].Port)
	require.Equal(t, "TCP", old.Ports[0].Protocol)
	require.Len(t, old.Endpoints, 2)
	require.Equal(t, netip.MustParseAddr("10.1.0.7"), old.Endpoints[0].IP)
	require.Equal(t, "pg-0", old.Endpoints[0].Hostname)
	require.Equal(t, "n1", old.Endpoints[0].Node)
	require.True(t, old.Endpoints[0].Ready)
	require.False(t, old.Endpoints[1].Ready, "a not-ready endpoint stays not ready for an old reader")

	// The required fields of the format-1 decoder are all there.
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(mustEncode(t, format2Service()), &fields))
	for _, f := range []string{"cluster", "clusterID", "namespace", "name", "headless", "ports", "endpoints"} {
		require.Contains(t, fields, f)
	}
}

func TestDecodeServiceRejects(t *testing.T) {
	valid := string(mustEncode(t, format2Service()))
	require.NoError(t, decodeService([]byte(valid)))
	with := func(mut func(*Service)) string {
		s := format2Service()
		mut(&s)
		return string(mustEncode(t, s))
	}
	for _, tc := range []struct {
		name, value string
		want        error
	}{
		{"unknown type", with(func(s *Service) { s.Type = "LoadBalancer" }), ErrUnsupported},
		{"type disagrees with headless", with(func(s *Service) { s.Type = ServiceTypeClusterSetIP }), ErrMismatch},
		{"format 2 without export time", with(func(s *Service) { s.ExportTime = time.Time{} }), ErrMissingField},
		{"port 0", with(func(s *Service) { s.Ports[0].Port = 0 }), ErrInvalidAddress},
		{"port 65536", with(func(s *Service) { s.Ports[0].Port = 65536 }), ErrInvalidAddress},
		{"protocol ICMP", with(func(s *Service) { s.Ports[0].Protocol = "ICMP" }), ErrUnsupported},
		{"protocol lower case", with(func(s *Service) { s.Ports[0].Protocol = "tcp" }), ErrUnsupported},
		{"protocol empty", with(func(s *Service) { s.Ports[0].Protocol = "" }), ErrUnsupported},
		{"target port 65536", with(func(s *Service) { s.Ports[0].TargetPort = 65536 }), ErrInvalidAddress},
		{"target port negative", with(func(s *Service) { s.Ports[0].TargetPort = -1 }), ErrInvalidAddress},
		{"port name not a label", with(func(s *Service) { s.Ports[0].Name = "SQL_port" }), ErrInvalidName},
		{"appProtocol with spaces", with(func(s *Service) { s.Ports[0].AppProtocol = "http 2" }), ErrInvalidName},
		{"appProtocol two slashes", with(func(s *Service) { s.Ports[0].AppProtocol = "a/b/c" }), ErrInvalidName},
		{"unknown affinity", with(func(s *Service) { s.SessionAffinity = "Cookie" }), ErrUnsupported},
		{"affinity timeout too long", with(func(s *Service) { s.SessionAffinityTimeoutSeconds = 86401 }), ErrUnsupported},
		{"affinity timeout negative", with(func(s *Service) { s.SessionAffinityTimeoutSeconds = -1 }), ErrUnsupported},
		{"timeout without ClientIP", with(func(s *Service) { s.SessionAffinity = SessionAffinityNone }), ErrMismatch},
		{"unknown family", with(func(s *Service) { s.IPFamilies = []string{"IPv5"} }), ErrUnsupported},
		{"family twice", with(func(s *Service) { s.IPFamilies = []string{IPFamilyIPv4, IPFamilyIPv4} }), ErrMismatch},
		{"three families", with(func(s *Service) { s.IPFamilies = []string{IPFamilyIPv4, IPFamilyIPv6, IPFamilyIPv4} }), ErrTooLarge},
		{"zone with space", with(func(s *Service) { s.Endpoints[0].Zone = "eu 1" }), ErrInvalidName},
		{"zone too long", with(func(s *Service) { s.Endpoints[0].Zone = strings.Repeat("z", 64) }), ErrInvalidName},
		{"pod with slash", with(func(s *Service) { s.Endpoints[0].Pod = "a/b" }), ErrInvalidName},
		{"node upper case", with(func(s *Service) { s.Endpoints[0].Node = "N1" }), ErrInvalidName},
		{"hostname with dot", with(func(s *Service) { s.Endpoints[0].Hostname = "pg-0.pg" }), ErrInvalidName},
		{"loopback endpoint", with(func(s *Service) { s.Endpoints[0].IP = netip.MustParseAddr("127.0.0.1") }), ErrInvalidAddress},
		{"too many ports", with(func(s *Service) {
			s.Ports = make([]ServicePort, MaxServicePorts+1)
			for i := range s.Ports {
				s.Ports[i] = ServicePort{Port: int32(i + 1), Protocol: ProtocolTCP}
			}
		}), ErrTooLarge},
		{"too many endpoints", with(func(s *Service) {
			s.Endpoints = make([]ServiceEndpoint, MaxServiceEndpoints+1)
			for i := range s.Endpoints {
				s.Endpoints[i] = ServiceEndpoint{IP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}
			}
		}), ErrTooLarge},
		{"format 1 with a bad protocol", strings.Replace(serviceFormat1, `"TCP"`, `"XTP"`, 1), ErrUnsupported},
		{"missing name", `{"cluster":"east","clusterID":1,"namespace":"db"}`, ErrMissingField},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, decodeService([]byte(tc.value)), tc.want)
		})
	}
}

func TestServiceAcceptsWhatKubernetesAllows(t *testing.T) {
	for name, mut := range map[string]func(*Service){
		"ClusterSetIP":             func(s *Service) { s.Type, s.Headless = ServiceTypeClusterSetIP, false },
		"affinity None":            func(s *Service) { s.SessionAffinity, s.SessionAffinityTimeoutSeconds = SessionAffinityNone, 0 },
		"affinity unset":           func(s *Service) { s.SessionAffinity, s.SessionAffinityTimeoutSeconds = "", 0 },
		"ClientIP without timeout": func(s *Service) { s.SessionAffinityTimeoutSeconds = 0 },
		"prefixed appProtocol":     func(s *Service) { s.Ports[0].AppProtocol = "kubernetes.io/h2c" },
		"target port":              func(s *Service) { s.Ports[0].TargetPort = 8080 },
		"UDP and SCTP": func(s *Service) {
			s.Ports = []ServicePort{{Port: 53, Protocol: ProtocolUDP}, {Port: 9, Protocol: ProtocolSCTP}}
		},
		"zone with dots, capitals":  func(s *Service) { s.Endpoints[0].Zone = "EU_West.1a" },
		"node with dots":            func(s *Service) { s.Endpoints[0].Node = "ip-10-0-0-1.ec2.internal" },
		"single family IPv6":        func(s *Service) { s.IPFamilies = []string{IPFamilyIPv6} },
		"no ports and no endpoints": func(s *Service) { s.Ports, s.Endpoints = []ServicePort{}, []ServiceEndpoint{} },
	} {
		t.Run(name, func(t *testing.T) {
			s := format2Service()
			mut(&s)
			require.NoError(t, decodeService(mustEncode(t, s)))
		})
	}
}

func TestValidateServiceForRefusesEndpointsOutsideThePodCIDRs(t *testing.T) {
	cfg := &ClusterConfig{Name: "east", ID: 1, PodCIDRs: mustPrefixes("10.1.0.0/16", "fd00:1::/48"), FormatVersion: 1}
	key := ObjectKeyParts{Cluster: "east", Namespace: "db", Name: "pg"}
	s := format2Service()
	require.NoError(t, ValidateServiceFor(key, &s, cfg))
	s.Endpoints[1].IP = netip.MustParseAddr("10.2.0.9")
	require.ErrorIs(t, ValidateServiceFor(key, &s, cfg), ErrOutOfRange)
	s = format2Service()
	s.ClusterID = 2
	require.ErrorIs(t, ValidateServiceFor(key, &s, cfg), ErrMismatch)
	s = format2Service()
	require.ErrorIs(t, ValidateServiceFor(ObjectKeyParts{Cluster: "east", Namespace: "db", Name: "other"}, &s, cfg), ErrMismatch)
}
