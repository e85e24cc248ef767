// Package meshapi is the wire format between podmesh clusters: the etcd key
// layout and the JSON values a clustermesh-apiserver publishes and every
// remote podmesh-agent reads. It is the only contract between clusters, so it
// is versioned (the "v1" in every key, FormatVersion in the cluster config).
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Values are JSON; unknown fields are ignored so that a newer cluster can
//     add fields without breaking older agents. A missing required field makes
//     the entry invalid rather than zero-valued.
//   - Addresses and prefixes are net/netip types, marshalled as strings. IPv4
//     and IPv6 share every code path; prefixes are kept in canonical (masked)
//     form and a non-canonical prefix such as 10.1.0.7/24 is rejected, because
//     a remote that sends one is either broken or probing.
//   - Decoding a remote value is separate from validating it against the
//     cluster's declared state: Decode* checks the value on its own (syntax,
//     bounds, names), Validate* checks it against the key it arrived under and
//     the ClusterConfig the same remote declared. The agent needs both; the
//     apiserver uses the encoders and the self-contained checks.
//   - Service entries have their own format number, ServicesFormat, inside
//     wire format v1 (keys and FormatVersion unchanged, so older agents keep
//     working). Format 2 (cluster capability "serviceExports") publishes only
//     Services with a ServiceExport and adds optional fields (export time,
//     type, appProtocol, session affinity, IP families, endpoint serving,
//     terminating, zone and pod): a format-1 reader ignores them, a format-2
//     reader decodes a format-1 value with them zero. A format-2 value (type
//     set) must carry its export time; docs/apiserver.md shows the entry.
//   - Every size is bounded (MaxValueSize, MaxIPsPerEndpoint, ...): a remote is
//     untrusted and must not be able to make an agent allocate without limit.
package meshapi
