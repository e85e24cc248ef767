// Package datapath makes remote pod CIDRs reachable: it holds the desired set
// of remote prefixes (Desired, written by the agent's mesh state) and the
// reconciler and backends (native, vxlan, ebpf) that make the kernel match it.
//
// The hand-off is deliberately small: an Entry is a prefix, the remote node
// that is its tunnel endpoint, and the remote cluster's ID. Everything the
// agent knows about remote clusters is reduced to that set before it reaches
// the kernel.
//
// # Using it
//
//	r, err := datapath.New(datapath.Config{Mode: "ebpf", LocalIP: nodeIP, LocalClusterID: id, Desired: d, Log: log})
//	for _, c := range r.Collectors() { registry.MustRegister(c) }
//	go r.Run(ctx) // converges on every Desired change and every RecheckInterval
//	st := r.Status()
//
// # Design notes: why the kernel objects look as they do
//
// Reconciliation. The reconciler has the shape of cilium/statedb's: Desired
// is a table of objects (one per remote prefix) that each carry the revision
// of their last change; a withdrawn prefix stays as a tombstone. Every mode
// implements the same operations: update (idempotent), delete (a missing
// object is success) and prune (remove the podmesh-owned kernel objects the
// full desired set does not hold, nothing else). Events only wake the
// reconciler: a Desired change runs an incremental pass over the objects
// whose revision moved since the last pass (update the live ones, delete the
// tombstones), without reading the kernel, so a burst of changes costs in
// proportion to the changes. The periodic re-check (default 10 s), a retry
// after any failure, a change of the prune permission or of a processed
// cluster's pod CIDRs run a full pass instead: read the kernel once, update
// every object against that read (writing only what is missing or
// different), delete what this process saw withdrawn, prune. What a full
// pass had to write or remove is the drift it found: it is counted
// (Status.LastOutOfSync, OutOfSyncTotal, podmesh_datapath_out_of_sync_total)
// and a pass over a converged kernel writes nothing. A full pass compares
// summaries first (in ebpf mode the ipcache dump byte for byte with the
// bpf.Image of the valid desired set, which the backend keeps while the
// set's generation stays and otherwise builds while the kernel is read; in
// the other modes a routeDigest of podmesh's routes against the desired
// set's) and decodes and indexes the read only when they differ; when the
// desired revision has not moved since the last pass it also reuses that
// pass's valid set and leaves the per-object status alone, so a no-op
// re-check costs the kernel's dump and one comparison (ebpf) or one hash
// (routes) per object. Each object keeps its
// own status (nil or the error that kept it from the kernel): a failing
// object does not stop the others, and the statuses sum up to the per
// cluster Programmed and Failed counts and the per-prefix Errors of Status.
// Nothing keeps a copy of kernel state between passes: a full pass's read
// is used by that pass and dropped; the kernel is the only record (the
// ebpf image is derived from the desired set, never from a read).
// Until Desired.AllowPrune, prune removes nothing, and only what the desired
// set withdrew while this process ran is deleted; so an agent restart, whose
// desired set fills up over seconds, withdraws nothing that still exists.
// Kernel state is left in place when Run returns.
//
// Kernel work is batched: ipcache writes and deletes go through
// BPF_MAP_UPDATE_BATCH / DELETE_BATCH (in the trie's key order), the
// full-pass read through
// BPF_MAP_LOOKUP_BATCH; routes go to the kernel 256 requests per sendmsg
// over one rtnetlink socket, NLM_F_REPLACE (or NLM_F_EXCL for a prefix this
// process has not programmed, so a foreign route is never overwritten)
// without a read before, acknowledged once per batch.
//
// Ownership. Every route podmesh installs carries rtm_protocol 150
// (RouteProtocol; not among iproute2's reserved numbers) and lives in the main
// table, because every pod must reach remote prefixes without policy routing.
// Prune considers only routes with that tag, deletes them by name (never a
// flush), and a wanted prefix already held by someone else's route is
// reported as failed and left alone. The only link podmesh creates is
// podmesh_vxlan; neighbour and FDB entries are only ever touched on it; BPF
// objects are pinned under the agent's own bpffs directory. Deleting
// something that is already gone is success.
//
// native. "<prefix> via <node IP> proto 150 mtu <underlay MTU>": no
// encapsulation, for underlays where node IPs are directly reachable and pod
// addresses are routable between nodes.
//
// vxlan. A VXLAN device podmesh_vxlan (VNI 0x706d, dstport TunnelPort, local
// LocalIP, learning off) and per prefix
// "<prefix> via <vtep> dev podmesh_vxlan onlink", a permanent neighbour entry
// vtep → TunnelMAC(endpoint) and a permanent FDB entry TunnelMAC(endpoint) →
// dst endpoint. For IPv4 prefixes over an IPv4 underlay the VTEP is the
// remote node's underlay address itself: it is already known (it is the
// tunnel endpoint), unique, and needs no address allocation or distribution;
// "onlink" lets the kernel accept it as a gateway on a device that has no
// address in its subnet, and the neighbour entry lives on podmesh_vxlan, so it
// never collides with the same address's entry on the underlay link. Each
// node's device MAC is derived from its underlay address (TunnelMAC: 0e:70 +
// the IPv4 bytes), so a node computes its peer's MAC without any exchange —
// and the MACs differ, which the receiver's VXLAN loop check (it drops frames
// whose inner source MAC is its own) requires. Every IPv6 gateway (IPv6
// prefixes, and IPv4 prefixes over an IPv6 underlay through RTA_VIA) is the
// link-local address derived (EUI-64) from the peer's MAC instead: the kernel
// refuses an onlink IPv6 gateway that a route through another device covers,
// as the underlay subnet's route covers the peer's address. The device's MTU
// and every route's MTU are the underlay MTU minus 50 (IPv4 underlay) or 70
// (IPv6).
//
// ebpf (the default). A collect-metadata ("external") VXLAN device
// podmesh_vxlan on TunnelPort, NOARP, carrying the mesh-wide bpf.DeviceMAC,
// MTU underlay minus overhead, with the bpf package's program at its egress
// (TCX link pinned under BPFRoot). Kernel routes are O(remote clusters): one
// "<cluster pod CIDR> dev podmesh_vxlan scope link proto 150 mtu <tunnel
// MTU>" per pod CIDR a remote cluster declares in its cluster-config (as the
// mesh admitted it; Desired.SetCluster carries them). Per-node and per-pod
// detail lives only in the ipcache, one entry prefix → {endpoint, cluster ID}
// per desired object. The route only steers traffic to the device; the
// program looks every packet up in the ipcache and picks the endpoint, so one
// device and one route per cluster serve every peer, and a prefix no cluster
// declares gets no route at all (an entry outside its cluster's pod CIDRs is
// refused with a status error). A packet to a declared CIDR without a more
// specific ipcache entry is dropped by the program and counted ("miss").
// NOARP makes the kernel use the device's own MAC as the inner destination,
// which is the receiver's MAC too (shared), so the frame is PACKET_HOST
// there; the program rewrites the inner source MAC so the receiver's loop
// check passes. A pass updates the ipcache before it adds cluster routes and
// removes routes before ipcache entries. A restart loads the program again,
// adopts the pinned maps and swaps the program on the pinned link
// atomically; device and routes are left untouched, so no packet is lost.
//
// MTU. Remote prefix routes carry the tunnel MTU so that a 1500-MTU pod's
// DF packet is answered with "fragmentation needed" by its own node (the
// forwarding path honours the route MTU) and path-MTU discovery converges.
//
// Reverse-path filtering. Tunnel-mode routes point at podmesh_vxlan, the
// device decapsulated return traffic arrives on, and native routes at the
// underlay link, so strict rp_filter passes replies from remote pods. One
// consequence, seen in the tests: ICMP errors generated by a remote node
// itself (sourced from its underlay address) arrive on podmesh_vxlan while the
// route back to that address is on the underlay link, so strict rp_filter
// drops them. Forwarding (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding)
// is enabled for each family in the desired set, with a log line, and
// re-checked every pass.
//
// Namespaces. The reconciler programs the network namespace the process is in,
// or the one Config.NetNS names (netlink handles bound to it; program
// attachment and sysctls on a locked thread switched into it). Tests use that
// to run one reconciler per simulated node in one process.
package datapath
