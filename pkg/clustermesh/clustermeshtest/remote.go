package clustermeshtest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Remote is one remote cluster's etcd and what it publishes.
type Remote struct {
	Config meshapi.ClusterConfig
	Etcd   *kvstoretest.Etcd
	// Fwd relays the agent's connections; cut it to make the remote unreachable.
	Fwd *kvstoretest.Forwarder
}

// StartRemote starts an etcd for cluster name and publishes its cluster
// config, a fresh heartbeat and every sync canary.
func StartRemote(tb testing.TB, name string, id uint32, podCIDRs ...string) *Remote {
	tb.Helper()
	e := kvstoretest.StartEtcd(tb, name)
	r := &Remote{
		Config: meshapi.ClusterConfig{Name: name, ID: id, PodCIDRs: prefixes(tb, podCIDRs), FormatVersion: meshapi.FormatVersion,
			Capabilities: meshapi.Capabilities{Endpoints: true, Services: true}},
		Etcd: e,
		Fwd:  kvstoretest.StartForwarder(tb, e.Addr),
	}
	r.publishMeta(tb)
	return r
}

func (r *Remote) publishMeta(tb testing.TB) {
	tb.Helper()
	r.PutJSON(tb, meshapi.ClusterConfigKey(r.Name()), r.Config)
	r.Heartbeat(tb, time.Now())
	for _, k := range meshapi.SyncedKinds {
		r.Put(tb, meshapi.SyncedKey(r.Name(), k), meshapi.FormatTime(time.Now()))
	}
}

// Rebuild replaces the remote's etcd by an empty one (same CA, history
// restarting at revision 1) holding the cluster config, a heartbeat and the
// canaries, as a replaced clustermesh-apiserver pod with an emptyDir would.
// Fwd still relays to the old one until the test calls
// Fwd.Retarget(r.Etcd.Addr), so the new state can be written first.
func (r *Remote) Rebuild(tb testing.TB) {
	tb.Helper()
	r.Etcd = r.Etcd.Rebuilt(tb)
	r.publishMeta(tb)
}

// Name is the cluster's name.
func (r *Remote) Name() string { return r.Config.Name }

// Heartbeat writes the heartbeat with time t.
func (r *Remote) Heartbeat(tb testing.TB, t time.Time) {
	tb.Helper()
	r.Put(tb, meshapi.HeartbeatKey(r.Name()), meshapi.FormatTime(t))
}

// Put writes a raw value.
func (r *Remote) Put(tb testing.TB, key, value string) int64 {
	tb.Helper()
	return r.Etcd.Put(tb, key, value)
}

// PutJSON writes v encoded as the wire format does.
func (r *Remote) PutJSON(tb testing.TB, key string, v any) int64 {
	tb.Helper()
	b, err := meshapi.Encode(v)
	if err != nil {
		tb.Fatalf("encode %s: %v", key, err)
	}
	return r.Etcd.Put(tb, key, string(b))
}

// Delete removes a key.
func (r *Remote) Delete(tb testing.TB, key string) int64 {
	tb.Helper()
	return r.Etcd.Delete(tb, key, false)
}

// Node builds a valid node value of this cluster.
func (r *Remote) Node(tb testing.TB, name string, internalIPs []string, podCIDRs ...string) meshapi.Node {
	tb.Helper()
	return meshapi.Node{Cluster: r.Name(), ClusterID: r.Config.ID, Name: name, InternalIPs: addrs(tb, internalIPs), PodCIDRs: prefixes(tb, podCIDRs)}
}

// PutNode publishes a valid node.
func (r *Remote) PutNode(tb testing.TB, name, internalIP string, podCIDRs ...string) int64 {
	tb.Helper()
	return r.PutJSON(tb, meshapi.NodeKey(r.Name(), name), r.Node(tb, name, []string{internalIP}, podCIDRs...))
}

// Endpoint builds a valid endpoint value of this cluster.
func (r *Remote) Endpoint(tb testing.TB, namespace, name, node string, ips ...string) meshapi.Endpoint {
	tb.Helper()
	return meshapi.Endpoint{Cluster: r.Name(), ClusterID: r.Config.ID, Namespace: namespace, Name: name, Node: node, IPs: addrs(tb, ips)}
}

// PutEndpoint publishes a valid endpoint.
func (r *Remote) PutEndpoint(tb testing.TB, namespace, name, node string, ips ...string) int64 {
	tb.Helper()
	return r.PutJSON(tb, meshapi.EndpointKey(r.Name(), namespace, name), r.Endpoint(tb, namespace, name, node, ips...))
}

// Revision returns the remote's current revision.
func (r *Remote) Revision(tb testing.TB) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := r.Etcd.Client.Get(ctx, "revision-probe")
	if err != nil {
		tb.Fatalf("get revision: %v", err)
	}
	return resp.Header.Revision
}

func prefixes(tb testing.TB, ss []string) []netip.Prefix {
	tb.Helper()
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			tb.Fatalf("parse prefix %q: %v", s, err)
		}
		out = append(out, p)
	}
	return out
}

func addrs(tb testing.TB, ss []string) []netip.Addr {
	tb.Helper()
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			tb.Fatalf("parse address %q: %v", s, err)
		}
		out = append(out, a)
	}
	return out
}
