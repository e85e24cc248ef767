// Package bpf is podmesh's eBPF datapath: the tc program attached at egress
// of the collect-metadata VXLAN device podmesh_vxlan, its maps, and the Go
// loader that keeps them across agent restarts.
//
// # What the program does
//
// The kernel routes every remote pod prefix to podmesh_vxlan. For each frame
// there the program (podmesh.c) reads the inner IPv4 or IPv6 destination,
// looks it up in the ipcache, an LPM trie that maps prefixes of both families
// to a tunnel endpoint (the remote node, IPv4 or IPv6), the remote cluster ID
// and agent-owned flags. On a hit it sets the tunnel key (remote endpoint,
// VNI = the local cluster ID from the config map, TTL 64), rewrites the inner
// destination MAC to DeviceMAC and the inner source MAC to InnerSourceMAC,
// counts packets and bytes for the remote cluster and returns TC_ACT_OK. On a
// miss it counts a drop and returns TC_ACT_SHOT: a collect-metadata device
// has nowhere to send a frame without a tunnel key.
//
// Why the MAC rewrite: after decapsulation the receiving VXLAN device drops a
// frame whose destination MAC is not its own (PACKET_OTHERHOST) and one whose
// source MAC is its own (the VXLAN loop check). Every podmesh_vxlan device
// therefore carries the one shared DeviceMAC (set it from the constant, mark
// the device NOARP so the kernel never resolves neighbours on it), and the
// program makes the inner source differ from it.
//
// # Maps and pins
//
// Under Options.PinDir (on a bpffs; names there may not contain dots):
//
//	ipcache           LPM trie, key {prefixlen, family, pad[3], addr[16]},
//	                  value {endpoint[16], endpoint family, pad[3], cluster ID, flags}
//	counters          per-CPU array[256] of {packets, bytes}, index = remote cluster ID
//	drops             per-CPU array of {packets, bytes}, index = drop reason (see Drops)
//	tcx_egress_<ifindex>  the TCX link of one device
//
// The config map (local cluster ID and the MACs) is not pinned: each Load
// writes a fresh one for its program. Key prefix lengths count the family
// byte and the padding (32 bits) plus the IP prefix length, so IPv4 and IPv6
// prefixes never match each other.
//
// # Programming the ipcache
//
// The Datapath keeps no copy of the ipcache: the kernel's map is the only
// record, so nothing can drift apart from it. Apply upserts and deletes only
// the entries it is given, without reading the map, in batched system calls
// (BPF_MAP_UPDATE_BATCH / DELETE_BATCH): the call for incremental work and
// the datapath reconciler's update and delete operations; it writes in the
// trie's order, which the kernel inserts markedly faster. An Image is a set
// of entries encoded and ordered as a dump of the map returns them (the
// trie's postorder); Write writes one. Dump reads the whole map in batches
// (BPF_MAP_LOOKUP_BATCH) and keeps it raw: the reconciler's full-pass read,
// which checks with Dump.Matches that it is byte for byte the Image of the
// desired entries and decodes (Dump.Entries) only when it is not. Entries
// and Read are Dump decoded. Sync converges the map on a whole set in one call (read, diff,
// write, and with prune delete the rest, undecodable entries included).
//
// # Restarts and upgrades
//
// Load adopts the pinned maps, so the ipcache and the counters survive the
// agent. Attach finds the pinned TCX link and swaps the program in it with
// one atomic link update: the device is never without a program. A pinned
// map whose layout differs from this version's (an older format or capacity)
// is migrated by Load: a new map is created, decodable entries are copied and
// the new map is renamed over the old pin; the old program keeps using the
// old map until Attach swaps the program. On kernels without TCX, Attach
// falls back to a cls_bpf filter in direct-action mode on clsact egress,
// replaced in place on restart.
//
// Close releases file descriptors only; Remove is the explicit teardown.
//
// # Building
//
// The bpf2go output (podmesh_bpfel.go, podmesh_bpfel.o) is committed, so no
// clang is needed to build or test. `make generate` rebuilds it with Debian
// 12's clang 14 and libbpf-dev headers; check-generated.sh verifies that the
// committed files match the sources.
package bpf
