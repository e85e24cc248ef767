// Package lab runs podmesh's multi-cluster lab on one machine: N clusters ×
// M nodes × P pods as network namespaces, each cluster with a real etcd +
// kube-apiserver (test/kubetest) and the real clustermesh-apiserver binary,
// each node with the real podmesh-agent binary, configured exactly as in a
// cluster (flags, NODE_NAME, a mounted-Secret config directory, certificates
// made with the certs package). The lab plays kubelet, scheduler and CNI:
// it writes Node and Pod objects (status through the status subresource),
// creates the pods' namespaces and veths, and runs an echo server in each
// pod. End-to-end tests (this package's tests) and `make demo` use it;
// cmd/podmesh-lab is its CLI. docs/lab.md is the user's guide.
//
// With Options.Kubelets the clusters are real instead (kubeup.go,
// kubenode.go, install.go, kubepods.go): kube-controller-manager and
// kube-scheduler join each control plane, every node runs its own
// containerd, kube-proxy and kubelet with Debian's CNI plugins inside a
// private mount namespace that fences the host (per-node directories over
// the shared host paths, fixed files over the kernel sysctls the kubelet
// would write, the node's own bpffs on /sys/fs/bpf), cgroups live under
// /podmesh-lab/<prefix>/<node>, podmesh is installed from daemonset/ with
// kubectl, and the pods are a real echo Deployment. The emulated mode stays
// for the drills that have not moved yet (docs/lab.md says which).
//
// Topology and addressing (IPv4; cluster i, node j, pod k):
//
//	<prefix>-ul          underlay namespace holding bridge br0 (no address)
//	<prefix>-c<i>-cp     control plane 192.168.i.1/16: etcd (127.0.0.1:12379),
//	                     kube-apiserver :6443, clustermesh-apiserver proxy :2379,
//	                     its health server :9963
//	<prefix>-c<i>-n<j>   node 192.168.i.(10+j)/16, pod CIDR 10.i.j.0/24,
//	                     ip_forward on, agent status on 127.0.0.1:9876
//	<prefix>-c<i>-n<j>-p<k>  pod 10.i.j.(10+k)/32 on eth0, default route via
//	                     169.254.1.1 onlink (static neighbour, no ARP)
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Nothing touches the host namespace: veths are created inside the
//     underlay namespace with their peer moved straight into the node's; ip
//     always runs with -n; sysctls are written from a thread that entered
//     the namespace; processes run under `nsenter --net` (which leaves the
//     mount namespace alone, unlike `ip netns exec`, so bpffs stays visible).
//     The host process reaches lab addresses by dialling from a thread that
//     entered the lab namespace (kubetest.DialInNetNS).
//   - Names: every netns and bpffs directory is <prefix>-<role> with the
//     roles forming a closed grammar (Names.Owns), so discovery by prefix
//     finds exactly one lab's objects and never those of a lab whose prefix
//     merely starts with ours. Interface names live only inside the lab's
//     namespaces and vanish with them.
//   - bpffs: when /sys/fs/bpf is not a bpffs (as on the development
//     machine), the lab mounts its own bpffs under its state directory
//     instead of mounting one on /sys/fs/bpf, which would change the host.
//   - Cleanup is layered: Close stops what the lab started; every child is
//     started from one permanently locked OS thread with Pdeathsig, so a
//     crashed owner takes its children with it; Down (and `podmesh-lab
//     down`) removes the rest after a crash by prefix and state directory:
//     processes inside the lab's namespaces, the namespaces, bpffs
//     directories and mounts, the state directory. Test labs use prefixes
//     starting with "pmlt" and the next test run sweeps those whose recorded
//     owner is dead.
//   - Convergence is level-checked: WaitConverged compares the kernel
//     (routes with podmesh's protocol in every node's namespace) and every
//     agent's /status with what the lab knows it created.
package lab
