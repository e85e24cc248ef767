package main

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestServiceName(t *testing.T) {
	for host, want := range map[string][2]string{
		"clustermesh-apiserver-cache.podmesh-system.svc":                {"clustermesh-apiserver-cache", "podmesh-system"},
		"clustermesh-apiserver-cache.podmesh-system.svc.cluster.local":  {"clustermesh-apiserver-cache", "podmesh-system"},
		"clustermesh-apiserver-cache.podmesh-system.svc.cluster.local.": {"clustermesh-apiserver-cache", "podmesh-system"},
	} {
		name, ns, ok := serviceName(host)
		require.True(t, ok, host)
		require.Equal(t, want, [2]string{name, ns}, host)
	}
	for _, host := range []string{"127.0.0.1", "mesh.east.example", "a.b", "a.b.c", "::1", ".ns.svc"} {
		_, _, ok := serviceName(host)
		require.False(t, ok, host)
	}
}

// TestServiceDialerReachesAServiceByItsClusterIP: a Service name is dialled
// at the ClusterIP the Kubernetes API gives, with no DNS involved; other
// hosts are dialled as given; a missing Service is an error that names it.
func TestServiceDialerReachesAServiceByItsClusterIP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	kube := fake.NewSimpleClientset(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "cache", Namespace: "podmesh-system"},
		Spec:       corev1.ServiceSpec{ClusterIP: "127.0.0.1"},
	})
	dial := serviceDialer(kube)
	c, err := dial(t.Context(), net.JoinHostPort("cache.podmesh-system.svc", port))
	require.NoError(t, err)
	require.Equal(t, ln.Addr().String(), c.RemoteAddr().String())
	c.Close()
	c, err = dial(t.Context(), ln.Addr().String())
	require.NoError(t, err)
	c.Close()
	_, err = dial(t.Context(), net.JoinHostPort("gone.podmesh-system.svc", port))
	require.ErrorContains(t, err, "resolve Service podmesh-system/gone")
}
