// Package kubetest runs a real etcd and a real kube-apiserver (the test-only
// builds in bin/, made by `make tools`) for integration tests and the lab.
//
// Design decisions:
//   - Authentication is by client certificate: the harness makes a CA and an
//     admin certificate in group system:masters, so tests can also act as any
//     ServiceAccount through impersonation or SubjectAccessReviews. RBAC is on.
//   - kube-apiserver runs with --disable-admission-plugins=ServiceAccount and
//     --endpoint-reconciler-type=none because nothing else of Kubernetes runs.
//     Options.ControlPlane (controlplane.go) makes a control plane real
//     kubelets join instead: ServiceAccount admission with the signing key,
//     Node,RBAC authorization with NodeRestriction, the lease endpoint
//     reconciler, kube-controller-manager and kube-scheduler, and
//     NodeKubeconfig/ClientKubeconfig for nodes and kube-proxy.
//   - With Options.NetNSPath the processes run inside that network namespace
//     (nsenter --net, which leaves the mount namespace and so bpffs alone), and
//     the returned rest.Config dials from a thread that has entered it, so a
//     process in the host namespace can talk to an API server that listens
//     only inside a lab namespace, without any link into the host namespace.
package kubetest
