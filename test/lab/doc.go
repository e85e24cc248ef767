// Package lab runs podmesh's multi-cluster lab on one machine: N real
// Kubernetes clusters × M real nodes, and installs podmesh on them exactly
// as a user does. Each cluster's control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler: test/kubetest with
// Options.ControlPlane) runs in a network namespace of its own; every node
// is a network namespace on one underlay bridge running its own containerd,
// kube-proxy and kubelet with Debian's CNI plugins (kubenode.go), inside a
// private mount namespace that fences the host (per-node directories over
// the shared host paths, fixed files over the kernel sysctls the kubelet
// would write, the node's own bpffs on /sys/fs/bpf). podmesh is installed
// from daemonset/ with kubectl (install.go): the agent is the DaemonSet's
// pod on every node, the clustermesh-apiserver the Deployment's pod behind
// its NodePort; the application pods are a real echo Deployment
// (kubepods.go); the images are podmesh's own (kubeimages.go, package
// images). End-to-end tests (this package's tests) and `make demo` use it;
// cmd/podmesh-lab is its CLI. docs/lab.md is the user's guide. (An earlier
// lab played kubelet, scheduler and CNI itself; it is gone.)
//
// Topology and addressing (cluster i, node j):
//
//	<prefix>-ul          underlay namespace holding bridge br0 (no address)
//	<prefix>-c<i>-cp     control plane 192.168.i.1/16: etcd (127.0.0.1:12379),
//	                     kube-apiserver :6443, controller-manager, scheduler
//	<prefix>-c<i>-n<j>   node 192.168.i.(10+j)/16 (its InternalIP), pod CIDR
//	                     10.i.j.0/24 on bridge cni0 (a pool node's CNI uses
//	                     10.i.(100+j).0/24 instead), agent status on
//	                     127.0.0.1:9876; in a dual-stack lab also
//	                     fd00:10:i:j::/64
//
// Pods have no named namespace: a pod's is found through its cgroup
// (/proc/<pid>/ns/net of one of its processes).
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Nothing touches the host namespace: veths are created inside the
//     underlay namespace with their peer moved straight into the node's; ip
//     always runs with -n; sysctls are written from a thread that entered
//     the namespace; processes run under `nsenter --net` (which leaves the
//     mount namespace alone, unlike `ip netns exec`). The host process
//     reaches lab addresses by dialling from a thread that entered the lab
//     namespace (kubetest.DialInNetNS).
//   - Names: every netns and bpffs directory is <prefix>-<role> with the
//     roles forming a closed grammar (Names.Owns), so discovery by prefix
//     finds exactly one lab's objects and never those of a lab whose prefix
//     merely starts with ours. Cgroups live under /podmesh-lab/<prefix>/.
//   - bpffs: when /sys/fs/bpf is not a bpffs (as on the development
//     machine), the lab mounts its own bpffs under its state directory
//     instead of mounting one on /sys/fs/bpf, which would change the host.
//   - Cleanup is layered: Close stops what the lab started; every child is
//     started from one permanently locked OS thread with Pdeathsig, so a
//     crashed owner takes its direct children with it; Down (and
//     `podmesh-lab down`) removes the rest after a crash by prefix, state
//     directory and cgroups: processes inside the lab's namespaces and
//     cgroups (containers), the namespaces, cgroups, bpffs directories and
//     mounts, the state directory. Test labs use prefixes starting with
//     "pmlt" and the next test run sweeps those whose recorded owner is dead.
//   - Convergence is level-checked: WaitConverged compares the kernel
//     (routes with podmesh's protocol in every node's namespace, the ipcache
//     in ebpf mode) and every agent's /status with what the lab expects from
//     its clusters' nodes and, listed from their API servers, the pods whose
//     IPs lie outside their node's pod CIDR.
package lab
