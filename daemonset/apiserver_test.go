package daemonset

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/test/kubetest"
)

const fieldManager = "podmesh-manifests-test"

// applier sends rendered objects to a real kube-apiserver with server-side
// apply, optionally as a dry run, with strict field validation.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t *testing.T, s *kubetest.Server) *applier {
	t.Helper()
	dyn, err := dynamic.NewForConfig(s.Config)
	require.NoError(t, err)
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(s.Client.Discovery()))}
}

func (a *applier) apply(ctx context.Context, u *unstructured.Unstructured, dryRun bool) error {
	gvk := u.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("map %s: %w", gvk, err)
	}
	body, err := json.Marshal(u.Object)
	if err != nil {
		return err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: &force, FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		ri = a.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	_, err = ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// podFromTemplate builds the Pod a controller would create from a workload's
// template, so pod admission (Pod Security, priority, quota) sees it too.
func podFromTemplate(t *testing.T, u *unstructured.Unstructured, namespace string) *corev1.Pod {
	t.Helper()
	var tmpl corev1.PodTemplateSpec
	switch u.GetKind() {
	case "DaemonSet":
		tmpl = typed[appsv1.DaemonSet](t, u).Spec.Template
	case "Deployment":
		tmpl = typed[appsv1.Deployment](t, u).Spec.Template
	default:
		t.Fatalf("no pod template in %s", u.GetKind())
	}
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.Name = u.GetName() + "-dry-run"
	pod.Namespace = namespace
	pod.Spec.NodeName = "node-1"
	return pod
}

// TestManifestsAgainstKubeAPIServer dry-runs every rendered object and the
// pods its workloads would create against a real kube-apiserver, then applies
// the RBAC for real and asks SubjectAccessReviews what each ServiceAccount
// may do.
func TestManifestsAgainstKubeAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs bin/kube-apiserver and bin/etcd (make tools); skipped in -short mode")
	}
	s := kubetest.Start(t)
	ctx := t.Context()
	a := newApplier(t, s)

	// Namespaced objects need their namespace: create it for real first.
	base := render(t, "base")
	require.NoError(t, a.apply(ctx, find(t, base, "Namespace", "podmesh-system"), false))
	// The MCS CRDs for real first as well: dry-running a CRD registers
	// nothing, and the RBAC checks and the importer below need the types.
	for _, u := range base {
		if u.GetKind() == "CustomResourceDefinition" {
			require.NoError(t, a.apply(ctx, u, false))
		}
	}
	waitForCRDs(t, a)
	_, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}

	for _, dir := range append(slices.Clone(kustomizations), "coredns") {
		t.Run("dry-run/"+dir, func(t *testing.T) {
			for _, u := range render(t, dir) {
				require.NoError(t, a.apply(ctx, u, true))
				// Nothing was stored.
				if u.GetKind() == "ConfigMap" {
					_, err := s.Client.CoreV1().ConfigMaps(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
					require.Error(t, err, "a dry run stores nothing")
				}
			}
			if dir == "coredns" {
				return
			}
			for _, kind := range []struct{ kind, name string }{
				{"DaemonSet", "podmesh-agent"}, {"Deployment", "clustermesh-apiserver"},
			} {
				pod := podFromTemplate(t, find(t, render(t, dir), kind.kind, kind.name), "podmesh-system")
				_, err := s.Client.CoreV1().Pods("podmesh-system").Create(ctx, pod, metav1.CreateOptions{
					DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict",
				})
				require.NoError(t, err, "pod of %s %s", kind.kind, kind.name)
			}
		})
	}

	t.Run("clustermesh-apiserver pod meets the restricted Pod Security level", func(t *testing.T) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   "restricted-check",
			Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
		}}
		_, err := s.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		require.NoError(t, err)
		pod := podFromTemplate(t, find(t, base, "Deployment", "clustermesh-apiserver"), ns.Name)
		pod.Spec.PriorityClassName = "" // critical classes are quota-limited outside podmesh-system
		_, err = s.Client.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		require.NoError(t, err)

		// The check can fail: the agent's pod is refused at that level.
		agent := podFromTemplate(t, find(t, base, "DaemonSet", "podmesh-agent"), ns.Name)
		agent.Spec.PriorityClassName = ""
		_, err = s.Client.CoreV1().Pods(ns.Name).Create(ctx, agent, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		require.ErrorContains(t, err, "violates PodSecurity")
	})

	t.Run("rbac", func(t *testing.T) {
		for _, u := range append(base, render(t, "coredns")...) {
			switch u.GetKind() {
			case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
				require.NoError(t, a.apply(ctx, u, false))
			}
		}
		type access struct {
			verb, group, resource, namespace string
			allowed                          bool
		}
		const ns = "podmesh-system"
		readSecrets := []access{
			{"get", "", "secrets", ns, false},
			{"list", "", "secrets", ns, false},
			{"watch", "", "secrets", "", false},
			{"get", "", "secrets", "kube-system", false},
		}
		for _, tc := range []struct {
			sa     string
			checks []access
		}{
			{"podmesh-agent", append([]access{
				{"get", "", "nodes", "", true},
				{"list", "", "nodes", "", true},
				{"watch", "", "nodes", "", true},
				{"update", "", "nodes", "", false},
				{"patch", "", "nodes", "", false},
				{"delete", "", "nodes", "", false},
				{"update", "", "nodes/status", "", false},
				{"list", "", "pods", "", false},
				{"create", "", "pods", ns, false},
				{"get", "", "configmaps", ns, false},
				{"update", "", "configmaps", ns, false},
				{"create", "", "serviceaccounts/token", ns, false},
				{"update", "apps", "daemonsets", ns, false},
			}, readSecrets...)},
			{"clustermesh-apiserver", append([]access{
				// Export: informers over what it publishes.
				{"list", "", "nodes", "", true},
				{"watch", "", "nodes", "", true},
				{"list", "", "pods", "", true},
				{"watch", "", "pods", "", true},
				{"list", "", "services", "", true},
				{"watch", "", "services", "", true},
				{"list", "discovery.k8s.io", "endpointslices", "", true},
				{"watch", "discovery.k8s.io", "endpointslices", "", true},
				{"get", mcsGroup, "serviceexports", "shop", true},
				{"list", mcsGroup, "serviceexports", "", true},
				{"watch", mcsGroup, "serviceexports", "", true},
				{"patch", mcsGroup, "serviceexports/status", "shop", true},
				{"update", mcsGroup, "serviceexports/status", "shop", true},
				{"create", "", "events", "shop", true},
				// Import: ServiceImports, derived Services, imported slices.
				{"create", mcsGroup, "serviceimports", "shop", true},
				{"update", mcsGroup, "serviceimports", "shop", true},
				{"delete", mcsGroup, "serviceimports", "shop", true},
				{"list", mcsGroup, "serviceimports", "", true},
				{"watch", mcsGroup, "serviceimports", "", true},
				{"update", mcsGroup, "serviceimports/status", "shop", true},
				{"create", "", "services", "shop", true},
				{"update", "", "services", "shop", true},
				{"delete", "", "services", "shop", true},
				{"create", "discovery.k8s.io", "endpointslices", "shop", true},
				{"update", "discovery.k8s.io", "endpointslices", "shop", true},
				{"delete", "discovery.k8s.io", "endpointslices", "shop", true},
				{"list", "", "namespaces", "", true},
				{"watch", "", "namespaces", "", true},
				{"create", "coordination.k8s.io", "leases", ns, true},
				// When the cluster joined the mesh: one ConfigMap, created once.
				{"create", "", "configmaps", ns, true},
				{"get", "", "configmaps/podmesh-established", ns, true},
				{"update", "", "configmaps/podmesh-established", ns, false},
				{"delete", "", "configmaps/podmesh-established", ns, false},
				{"get", "", "configmaps/kube-root-ca.crt", ns, false},
				{"create", "", "configmaps", "kube-system", false},
				{"update", "coordination.k8s.io", "leases/podmesh-service-importer", ns, true},
				// Never.
				{"update", "coordination.k8s.io", "leases/kube-controller-manager", "kube-system", false},
				{"create", "coordination.k8s.io", "leases", "kube-system", false},
				{"update", "coordination.k8s.io", "leases/other", ns, false},
				{"create", mcsGroup, "serviceexports", "shop", false},
				{"update", mcsGroup, "serviceexports", "shop", false},
				{"delete", mcsGroup, "serviceexports", "shop", false},
				{"create", "", "pods", ns, false},
				{"update", "", "pods", ns, false},
				{"delete", "", "pods", ns, false},
				{"update", "", "nodes", "", false},
				{"delete", "", "namespaces", "shop", false},
				{"create", "", "namespaces", "", false},
				{"update", "", "services/status", "shop", false},
				{"get", "", "configmaps", ns, false},
				{"update", "apps", "deployments", ns, false},
				{"create", "rbac.authorization.k8s.io", "clusterrolebindings", "", false},
			}, readSecrets...)},
			{"kube-system:coredns", []access{
				{"list", mcsGroup, "serviceimports", "", true},
				{"watch", mcsGroup, "serviceimports", "", true},
				{"create", mcsGroup, "serviceimports", "shop", false},
				{"update", mcsGroup, "serviceimports", "shop", false},
				{"list", mcsGroup, "serviceexports", "", false},
			}},
		} {
			sa, saNS := tc.sa, ns
			if n, name, ok := strings.Cut(tc.sa, ":"); ok {
				saNS, sa = n, name
			}
			user := "system:serviceaccount:" + saNS + ":" + sa
			for _, c := range tc.checks {
				t.Run(fmt.Sprintf("%s/%s %s/%s in %q", tc.sa, c.verb, c.group, c.resource, c.namespace), func(t *testing.T) {
					sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
						User:               user,
						Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + saNS, "system:authenticated"},
						ResourceAttributes: resourceAttributes(c.namespace, c.verb, c.group, c.resource),
					}}
					got, err := s.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
					require.NoError(t, err)
					require.Equal(t, c.allowed, got.Status.Allowed, "%s: %s", user, got.Status.Reason)
				})
			}
		}

		t.Run("clustermesh-apiserver syncs and imports with only its RBAC", func(t *testing.T) {
			runAPIServerAs(t, s, "system:serviceaccount:"+ns+":clustermesh-apiserver",
				[]string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"})
		})
	})
}

// runAPIServerAs runs the real clustermesh-apiserver (server package) against
// s as user, and reports whether it became ready: its informers list and
// watch every kind it mirrors, so readiness proves the permissions suffice.
func runAPIServerAs(t *testing.T, s *kubetest.Server, user string, groups []string) {
	t.Helper()
	dir := t.TempDir()
	meshDir := filepath.Join(dir, "clustermesh")
	require.NoError(t, os.Mkdir(meshDir, 0o755))
	ca, err := certs.NewCA(certs.Options{CommonName: "podmesh-ca-east"})
	require.NoError(t, err)
	srvKP, err := ca.IssueServer(certs.Options{CommonName: "clustermesh-apiserver.east", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	require.NoError(t, err)
	require.NoError(t, srvKP.WriteFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), false))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644))
	cfg, err := server.ParseFlags([]string{
		"--cluster-name=east", "--cluster-id=1", "--pod-cidrs=10.1.0.0/16",
		"--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0",
		"--tls-cert=" + filepath.Join(dir, "tls.crt"), "--tls-key=" + filepath.Join(dir, "tls.key"),
		"--tls-client-ca=" + filepath.Join(dir, "ca.crt"), "--allowed-peers=remote-west",
		"--data-dir=" + filepath.Join(dir, "data"),
		// The importer: an empty remote directory still starts its writer
		// (informers over ServiceImports, ServiceExports, Services, slices
		// and namespaces) and takes the Lease.
		"--clustermesh-config=" + meshDir, "--leader-election-namespace=podmesh-system", "--leader-election-id=pod-1",
	}, io.Discard)
	require.NoError(t, err)
	cfg.UnsafeNoFsync = true

	restCfg := rest.CopyConfig(s.Config)
	restCfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	// The impersonation is in effect: Secrets are out of reach.
	k, err := kubernetes.NewForConfig(restCfg)
	require.NoError(t, err)
	_, err = k.CoreV1().Secrets("podmesh-system").List(t.Context(), metav1.ListOptions{})
	require.True(t, apierrors.IsForbidden(err), "listing Secrets as %s: %v", user, err)

	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	srv, err := server.New(cfg, restCfg, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, prometheus.NewRegistry()) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	select {
	case <-srv.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("clustermesh-apiserver as %s stopped before it was ready: %v", user, err)
	case <-time.After(90 * time.Second): // a guard against a hang, not a timing assertion
		t.Fatalf("clustermesh-apiserver as %s never became ready: its permissions do not cover its informers", user)
	}
	// The importer holds the Lease: it could create and update it, and its
	// informers synced (it writes only after that).
	require.Eventually(t, func() bool {
		imp := srv.Importer()
		return imp != nil && imp.Status().Leader && testutil.ToFloat64(srv.ImportMetrics().LeaderGauge()) == 1
	}, 90*time.Second, 100*time.Millisecond, "the importer as %s never led", user)
	lease, err := k.CoordinationV1().Leases("podmesh-system").Get(t.Context(), "podmesh-service-importer", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, "pod-1", *lease.Spec.HolderIdentity)
}

const mcsGroup = "multicluster.x-k8s.io"

// resourceAttributes reads "resource/subresource" and, for leases,
// "leases/<name>" as a resource name.
func resourceAttributes(namespace, verb, group, resource string) *authzv1.ResourceAttributes {
	// "leases/<name>" and "configmaps/<name>" name an object, not a subresource.
	ra := &authzv1.ResourceAttributes{Namespace: namespace, Verb: verb, Group: group, Resource: resourceOf(resource), Subresource: subresourceOf(resource)}
	if (ra.Resource == "leases" || ra.Resource == "configmaps") && ra.Subresource != "" {
		ra.Name, ra.Subresource = ra.Subresource, ""
	}
	return ra
}

// waitForCRDs waits until the MCS types are served (the applier's REST
// mapper is refreshed, so later applies find them).
func waitForCRDs(t *testing.T, a *applier) {
	t.Helper()
	require.Eventually(t, func() bool {
		a.mapper.Reset()
		_, err := a.mapper.RESTMapping(schema.GroupKind{Group: mcsGroup, Kind: "ServiceImport"}, "v1beta1")
		return err == nil
	}, 60*time.Second, 100*time.Millisecond, "MCS CRDs served")
}

func resourceOf(r string) string {
	for i := range r {
		if r[i] == '/' {
			return r[:i]
		}
	}
	return r
}

func subresourceOf(r string) string {
	for i := range r {
		if r[i] == '/' {
			return r[i+1:]
		}
	}
	return ""
}
