package importer

import (
	"net/netip"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// FuzzImportPath runs arbitrary service values from a remote through the
// whole import path short of the kube-apiserver: decode, ExportFrom against
// the remote's declared config, merge with a local export, and the objects
// the importer would write. No input may panic, and nothing accepted may
// carry an endpoint outside the remote's pod CIDRs, a port out of range, or
// an object name Kubernetes would refuse.
func FuzzImportPath(f *testing.F) {
	f.Add([]byte(`{"cluster":"west","clusterID":2,"namespace":"db","name":"pg","headless":true,"type":"Headless","exportTime":"2026-11-30T03:04:05Z",` +
		`"ports":[{"name":"sql","port":5432,"protocol":"TCP","targetPort":15432}],` +
		`"endpoints":[{"ip":"10.2.0.7","hostname":"pg-0","node":"n1","ready":true,"pod":"pg-0"},{"ip":"fd00:2::8","hostname":"","node":"n2","ready":false,"serving":true,"terminating":true,"zone":"a","pod":"pg-1"}]}`))
	f.Add([]byte(`{"cluster":"west","clusterID":2,"namespace":"web","name":"front","headless":false,"type":"ClusterSetIP","exportTime":"2020-01-01T00:00:00Z",` +
		`"sessionAffinity":"ClientIP","sessionAffinityTimeoutSeconds":30,"ipFamilies":["IPv4"],` +
		`"ports":[{"name":"http","port":80,"protocol":"TCP","appProtocol":"http"},{"name":"dns","port":53,"protocol":"UDP"}],"endpoints":[]}`))
	f.Add([]byte(`{"cluster":"west","clusterID":2,"namespace":"db","name":"pg","headless":true,"ports":[{"port":1,"protocol":"SCTP"}],"endpoints":[{"ip":"10.9.0.1","ready":true}]}`))
	cfg := &meshapi.ClusterConfig{Name: "west", ID: 2, FormatVersion: meshapi.FormatVersion,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}}
	local := &Export{Cluster: "east", Time: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), Type: meshapi.ServiceTypeClusterSetIP,
		SessionAffinity: "None", Ports: []meshapi.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := meshapi.DecodeService(data)
		if err != nil {
			return
		}
		parts := meshapi.ObjectKeyParts{Cluster: s.Cluster, Namespace: s.Namespace, Name: s.Name}
		e, _, err := ExportFrom(parts, s, cfg)
		if err != nil {
			return
		}
		for _, ep := range e.Endpoints {
			if !meshapi.AddrWithin(ep.IP, cfg.PodCIDRs) {
				t.Fatalf("accepted endpoint %s outside %v", ep.IP, cfg.PodCIDRs)
			}
		}
		for _, ports := range [][]meshapi.ServicePort{e.Ports, e.EndpointPorts} {
			for _, p := range ports {
				if p.Port < 1 || p.Port > 65535 || p.TargetPort != 0 {
					t.Fatalf("accepted port %+v", p)
				}
			}
		}
		l := *local
		l.Key = e.Key
		m := Merge([]*Export{e, &l})
		if m == nil {
			t.Fatal("two exports merged into nothing")
		}
		if e.Type == meshapi.ServiceTypeClusterSetIP {
			if errs := validation.IsDNS1035Label(desiredDerivedService(m).Name); len(errs) > 0 {
				t.Fatalf("derived Service name: %v", errs)
			}
		}
		_ = desiredServiceImport(m)
		for _, sl := range desiredSlices(e) {
			if errs := validation.IsDNS1123Subdomain(sl.Name); len(errs) > 0 || len(sl.Name) > 63 {
				t.Fatalf("slice name %q: %v", sl.Name, errs)
			}
			if len(sl.Endpoints) > MaxEndpointsPerSlice {
				t.Fatalf("slice with %d endpoints", len(sl.Endpoints))
			}
			if sl.Labels[LabelSourceCluster] != "west" {
				t.Fatalf("slice claims source %q", sl.Labels[LabelSourceCluster])
			}
			for _, ep := range sl.Endpoints {
				if ep.Hostname != nil && len(validation.IsDNS1123Label(*ep.Hostname)) > 0 {
					t.Fatalf("slice hostname %q", *ep.Hostname)
				}
				if (sl.AddressType == discoveryv1.AddressTypeIPv6) != netip.MustParseAddr(ep.Addresses[0]).Is6() {
					t.Fatalf("address %s in a %s slice", ep.Addresses[0], sl.AddressType)
				}
			}
		}
	})
}
