// Package daemonset holds the Kubernetes manifests a user applies per
// cluster, as a kustomize base with example overlays:
//
//	base/                    namespace, ConfigMap, RBAC, agent DaemonSet,
//	                         clustermesh-apiserver Deployment, Service, PDB,
//	                         the Multi-Cluster Services CRDs (mcs-crds.yaml,
//	                         generated: TestMCSCRDsAreMCSAPIs -update)
//	overlays/east, west      one example per cluster: identity and image tags
//	overlays/south           a third example: LoadBalancer, two allowed peers
//	components/loadbalancer  optional: LoadBalancer Service instead of NodePort
//	coredns/                 applied on its own: CoreDNS' read access to
//	                         ServiceImports, and Corefile.example with the
//	                         clusterset.local change (docs/install.md)
//
// The package has no Go code besides its tests, which render every
// kustomization with the kustomize library (krusty), check the security
// properties that matter (capabilities, least-privilege RBAC, optional
// Secret mounts, the CRDs equal to mcs-api's), dry-run every object against
// a real kube-apiserver with strict field validation, and check RBAC with
// SubjectAccessReviews and a real clustermesh-apiserver run as its
// ServiceAccount.
//
// Design decisions are written next to each object in the YAML and, for the
// agent's privileges, in docs/install.md.
package daemonset
