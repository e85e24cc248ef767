// Package mcscrd installs the Multi-Cluster Services CRDs (ServiceExport and
// ServiceImport, group multicluster.x-k8s.io) into a cluster, from the YAML
// that sigs.k8s.io/mcs-api embeds — the same YAML daemonset/ ships — so tests,
// the lab and the manifests never disagree about the schema.
//
// Design decisions:
//   - The CRDs are applied with server-side apply (field manager "podmesh"),
//     so Install may run again on a cluster that already has them: it is
//     idempotent and upgrades them to this module's mcs-api version.
//   - It uses the dynamic client, not the apiextensions clientset, so the
//     product's go.mod does not grow by k8s.io/apiextensions-apiserver for a
//     helper that only creates two objects.
//   - Install returns once both CRDs are Established, i.e. their versions
//     (v1beta1 stored, v1alpha1 served) are served and a client may use them.
package mcscrd
