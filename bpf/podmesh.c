//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// podmesh tc egress program for the collect-metadata VXLAN device
// podmesh_vxlan. For every frame the kernel routes to that device it looks
// the inner destination address up in the ipcache (an LPM trie holding IPv4
// and IPv6 prefixes in one map), and on a hit sets the tunnel key (remote
// node, VNI = local cluster ID, TTL 64), rewrites the inner MAC addresses so
// the receiving VXLAN device accepts the frame, counts it per remote cluster
// and lets it go. Everything else is counted as a drop and shot: a
// collect-metadata device cannot send a frame without a tunnel key.
//
// Layouts here are mirrored in Go (see ipcache.go); bpf2go generates the Go
// structs from the BTF of this file, so the two cannot drift apart silently.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define IPCACHE_MAX_ENTRIES (1 << 20)
#define MAX_CLUSTERS 256
#define TUNNEL_TTL 64

// Address families as stored in keys and values. Deliberately not AF_INET /
// AF_INET6 so a zeroed key or value never looks valid.
enum podmesh_family {
	PODMESH_FAMILY_IPV4 = 4,
	PODMESH_FAMILY_IPV6 = 6,
};

// Reasons a frame is dropped; the index into podmesh_drops.
enum podmesh_drop_reason {
	PODMESH_DROP_MISS = 0,          // no ipcache entry covers the destination
	PODMESH_DROP_MALFORMED = 1,     // not IPv4/IPv6 or truncated headers
	PODMESH_DROP_TUNNEL_KEY = 2,    // bpf_skb_set_tunnel_key or MAC rewrite failed
	PODMESH_DROP_NOT_CONFIGURED = 3, // config map never written by the loader
	PODMESH_DROP_MAX = 4,
};

// ipcache key. prefixlen counts bits from the start of family, so the family
// byte and the padding are always part of the match: prefixlen = 32 + the
// IP prefix length. IPv4 addresses occupy addr[0..3], the rest stays zero.
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

// ipcache value: where to send traffic for the prefix.
struct ipcache_value {
	__u8 endpoint[16];    // remote node; IPv4 in endpoint[0..3]
	__u8 endpoint_family; // PODMESH_FAMILY_*
	__u8 pad[3];
	__u32 cluster_id; // remote cluster, 1..255; index into podmesh_counters
	__u32 flags;      // owned by the agent; not interpreted by this program
};

// Runtime configuration, written by the loader before the program is
// attached. Not pinned: every Load writes a fresh one.
struct config {
	__u32 local_cluster_id; // becomes the VNI; 0 means "not configured"
	__u8 device_mac[6];     // inner destination MAC (the shared device MAC)
	__u8 source_mac[6];     // inner source MAC (differs from device_mac)
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, IPCACHE_MAX_ENTRIES);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} podmesh_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_CLUSTERS);
	__type(key, __u32);
	__type(value, struct counter);
} podmesh_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PODMESH_DROP_MAX);
	__type(key, enum podmesh_drop_reason);
	__type(value, struct counter);
} podmesh_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} podmesh_config SEC(".maps");

static __always_inline void count(void *map, __u32 idx, __u32 len)
{
	struct counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline int drop(struct __sk_buff *skb, enum podmesh_drop_reason reason)
{
	count(&podmesh_drops, reason, skb->len);
	return TC_ACT_SHOT;
}

SEC("tc")
int podmesh_egress(struct __sk_buff *skb)
{
	struct ipcache_key key = {};
	struct ipcache_value *val;
	struct config *cfg;
	struct bpf_tunnel_key tkey = {};
	__u64 tflags = 0;
	__u32 zero = 0;
	__u16 proto;

	cfg = bpf_map_lookup_elem(&podmesh_config, &zero);
	if (!cfg || cfg->local_cluster_id == 0)
		return drop(skb, PODMESH_DROP_NOT_CONFIGURED);

	// bpf_skb_load_bytes works whether or not the headers are linear.
	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, sizeof(proto)) < 0)
		return drop(skb, PODMESH_DROP_MALFORMED);

	switch (proto) {
	case bpf_htons(ETH_P_IP):
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), key.addr, 4) < 0)
			return drop(skb, PODMESH_DROP_MALFORMED);
		key.family = PODMESH_FAMILY_IPV4;
		key.prefixlen = 32 + 32;
		break;
	case bpf_htons(ETH_P_IPV6):
		if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, daddr), key.addr, 16) < 0)
			return drop(skb, PODMESH_DROP_MALFORMED);
		key.family = PODMESH_FAMILY_IPV6;
		key.prefixlen = 32 + 128;
		break;
	default:
		return drop(skb, PODMESH_DROP_MALFORMED);
	}

	val = bpf_map_lookup_elem(&podmesh_ipcache, &key);
	if (!val)
		return drop(skb, PODMESH_DROP_MISS);

	tkey.tunnel_id = cfg->local_cluster_id;
	tkey.tunnel_ttl = TUNNEL_TTL;
	if (val->endpoint_family == PODMESH_FAMILY_IPV6) {
		__builtin_memcpy(tkey.remote_ipv6, val->endpoint, 16);
		tflags = BPF_F_TUNINFO_IPV6;
	} else if (val->endpoint_family == PODMESH_FAMILY_IPV4) {
		__u32 v4;

		__builtin_memcpy(&v4, val->endpoint, 4);
		tkey.remote_ipv4 = bpf_ntohl(v4); // the helper takes host byte order
	} else {
		return drop(skb, PODMESH_DROP_TUNNEL_KEY);
	}
	if (bpf_skb_set_tunnel_key(skb, &tkey, sizeof(tkey), tflags) < 0)
		return drop(skb, PODMESH_DROP_TUNNEL_KEY);

	// Destination first, source second: the Ethernet header order.
	if (bpf_skb_store_bytes(skb, 0, cfg->device_mac, 12, 0) < 0)
		return drop(skb, PODMESH_DROP_TUNNEL_KEY);

	if (val->cluster_id < MAX_CLUSTERS)
		count(&podmesh_counters, val->cluster_id, skb->len);
	return TC_ACT_OK;
}
