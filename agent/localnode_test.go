package main

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeFromObject(t *testing.T) {
	addrs := func(a ...string) []corev1.NodeAddress {
		var out []corev1.NodeAddress
		for i := 0; i < len(a); i += 2 {
			out = append(out, corev1.NodeAddress{Type: corev1.NodeAddressType(a[i]), Address: a[i+1]})
		}
		return out
	}
	tests := []struct {
		name               string
		spec               corev1.NodeSpec
		addresses          []corev1.NodeAddress
		wantTunnel, wantPC string
		wantErr            string
	}{
		{name: "first InternalIP is the tunnel source", addresses: addrs("ExternalIP", "203.0.113.1", "InternalIP", "192.168.0.2", "InternalIP", "fd00::2"), spec: corev1.NodeSpec{PodCIDRs: []string{"10.1.2.0/24"}}, wantTunnel: "192.168.0.2", wantPC: "[10.1.2.0/24]"},
		{name: "IPv6 first", addresses: addrs("InternalIP", "fd00::2", "InternalIP", "192.168.0.2"), wantTunnel: "fd00::2", wantPC: "[]"},
		{name: "legacy single PodCIDR", addresses: addrs("InternalIP", "192.168.0.2"), spec: corev1.NodeSpec{PodCIDR: "10.1.2.0/24"}, wantTunnel: "192.168.0.2", wantPC: "[10.1.2.0/24]"},
		{name: "no InternalIP", addresses: addrs("Hostname", "n1", "ExternalIP", "203.0.113.1"), wantErr: "node n1 has no InternalIP yet"},
		{name: "garbage InternalIP", addresses: addrs("InternalIP", "not-an-ip"), wantErr: `InternalIP "not-an-ip"`},
		{name: "garbage pod CIDR", addresses: addrs("InternalIP", "192.168.0.2"), spec: corev1.NodeSpec{PodCIDRs: []string{"10.1.2.0/33"}}, wantErr: `pod CIDR "10.1.2.0/33"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := nodeFromObject(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: tt.spec, Status: corev1.NodeStatus{Addresses: tt.addresses}})
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantTunnel, ln.TunnelIP.String())
			require.Equal(t, tt.wantPC, fmt.Sprint(ln.PodCIDRs))
		})
	}
}
