package main

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/agentstatus"
)

func TestPrintReport(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	rep := &Report{
		Node: "w1", TunnelIP: "192.168.2.1",
		Mesh: agentstatus.Mesh{
			LocalCluster: "west", LocalClusterID: 2, Synced: true, SyncReason: "all 2 remote clusters synced",
			Remotes: []agentstatus.Remote{
				{Cluster: "east", ClusterID: 3, Ready: true, Since: now.Add(-90 * time.Second), Nodes: 3, Endpoints: 40, Prefixes: 5},
				{Cluster: "north", Reason: "unreachable: read heartbeat: context deadline exceeded", Since: now.Add(-5 * time.Second), Prefixes: 2,
					LastError: "unreachable: read heartbeat: context deadline exceeded", LastErrorTime: now.Add(-5 * time.Second)},
			},
		},
	}
	var buf bytes.Buffer
	require.NoError(t, printReport(&buf, rep, now))
	out := buf.String()
	require.Contains(t, out, "cluster west (id 2), node w1 (192.168.2.1), synced (all 2 remote clusters synced)")
	require.Regexp(t, `east\s+3\s+yes\s+2m0s ago\s+3\s+40\s+5 desired\s+0\s+-`, out)
	require.Regexp(t, `north\s+-\s+no: unreachable: read heartbeat: context deadline exceeded\s+5s ago\s+0\s+0\s+2 desired`, out)

	rep.Datapath = &agentstatus.Datapath{Mode: "ebpf", Programmed: map[string]int{"east": 4}}
	buf.Reset()
	require.NoError(t, printReport(&buf, rep, now))
	require.Contains(t, buf.String(), "datapath ebpf, 0 reconcile errors")
	require.Regexp(t, `east\s+3\s+yes\s+2m0s ago\s+3\s+40\s+4/5\s`, buf.String(), "programmed/desired when the datapath reports")
	require.NotContains(t, buf.String(), "cache ", "direct mode has no cache line")

	rep.Mesh.Cache = &agentstatus.Cache{
		Endpoint: "https://clustermesh-apiserver-cache.podmesh-system.svc:2381", Address: "clustermesh-apiserver-cache.podmesh-system.svc:2381 -> 10.96.0.20:2381",
		Epoch: "q3Zx", Connected: true, Listings: 2, LastListed: now.Add(-30 * time.Second),
	}
	buf.Reset()
	require.NoError(t, printReport(&buf, rep, now))
	require.Contains(t, buf.String(), "cache https://clustermesh-apiserver-cache.podmesh-system.svc:2381 (clustermesh-apiserver-cache.podmesh-system.svc:2381 -> 10.96.0.20:2381), replica epoch q3Zx, connected, 2 listings, last 30s ago")

	rep.Mesh.Cache.Connected, rep.Mesh.Cache.RetryAt = false, now.Add(4200*time.Millisecond)
	buf.Reset()
	require.NoError(t, printReport(&buf, rep, now))
	require.Contains(t, buf.String(), "replica epoch q3Zx, not connected, retry in 4.2s, 2 listings")
}
