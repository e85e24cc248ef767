// Package soak runs podmesh's chaos soak on a real-kubelet lab (test/lab):
// continuous traffic — a sequence-numbered UDP flow
// and a TCP echo stream from every echo pod to every echo pod of the other
// clusters — while faults drawn from a seeded random source hit the lab one
// after the other: clustermesh-apiserver and agent pods killed, kubelets,
// containerd, etcd and kube-apiservers SIGKILLed and restarted (by PID,
// only processes inside the lab's namespaces), underlay links flapped,
// remote Secrets deleted and re-added, the agent DaemonSet rolled.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - One fault at a time, each followed by waiting until the lab has
//     healed (the process back, podmesh rolled out): a fault that never
//     heals stops the run and is reported, instead of cascading into noise.
//     The sequence of faults is a function of the seed; their timing is not.
//   - Loss is reported only where the data path was cut on purpose: a
//     flapped underlay link of either end's node, or a deleted mesh Secret
//     of either end's cluster (its agents withdraw every remote route).
//     Every other lost datagram or broken TCP stream is a finding, listed
//     with its flow and time.
//   - A deleted Secret cuts where the podmesh processes see it, not where
//     the API does: the kubelet refreshes a pod's Secret volume on its next
//     pod sync, so it can empty the volume seconds after the Secret is
//     back and the fault has healed. The soak reads every agent's and
//     clustermesh-apiserver's volume through /proc/<pid>/root every
//     SampleEvery; an interval in which a remote's file was missing cuts
//     that agent's flows to that remote and that importer's lookups, with
//     the same margins as a fault, and nothing else.
//   - A DNS lookup is one query that may wait as long as a pod's resolver
//     does (5 s) for its answer; slower answers than 1 s are listed.
//   - Ownership is sampled, not inferred: every SampleEvery the sampler
//     reads every node's podmesh routes and ipcache from the kernel and
//     flags any prefix not inside a remote cluster's pod CIDRs, or an
//     ipcache entry whose tunnel endpoint or cluster ID is not its owner's.
//   - The end checks are the lab's own convergence check (routes and
//     ipcache equal to what the lab knows it created, every remote ready),
//     the neighbour/FDB entries on podmesh_vxlan against what the routing
//     mode programs (lab.CheckTunnelNeighbours), and a snapshot taken before the first fault compared with the lab
//     after the last: per node the non-veth links and the bpffs pins, the
//     veths against the pods the API places on the node, and per cluster
//     the EndpointSlices by service and manager.
//
// The command test/chaos runs a long soak; TestChaosSoakShort is the short
// version in `make test`.
package soak
