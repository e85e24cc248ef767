package lab

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// PodNamespace is the Kubernetes namespace of the lab's pods.
const PodNamespace = "default"

// The lab plays kubelet: it registers Node objects and reports Pod status,
// the way a kubelet and a CNI plugin would, through the real API server.

// registerNode creates the Node object with its pod CIDR, then reports its
// addresses and readiness through the status subresource, as a kubelet and
// the node IPAM controller do.
func registerNode(ctx context.Context, kc kubernetes.Interface, name string, ip netip.Addr, podCIDRs []netip.Prefix) error {
	cidrs := make([]string, len(podCIDRs))
	for k, p := range podCIDRs {
		cidrs[k] = p.String()
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{"kubernetes.io/hostname": name, "podmesh.io/lab": "true"},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
	}
	created, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	now := metav1.NewTime(time.Now())
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: ip.String()},
			{Type: corev1.NodeHostName, Address: name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "KubeletReady", Message: "podmesh lab node",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	if _, err := kc.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of node %s: %w", name, err)
	}
	return nil
}

// deleteNode removes a Node object; a missing one is not an error.
func deleteNode(ctx context.Context, kc kubernetes.Interface, name string) error {
	err := kc.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}

// createPod creates a Pod bound to a node (as the scheduler would).
func createPod(ctx context.Context, kc kubernetes.Interface, name, node string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: PodNamespace, Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: "podmesh.invalid/lab-echo:v1",
				Ports: []corev1.ContainerPort{{ContainerPort: ServeTCPPort, Protocol: corev1.ProtocolTCP}},
			}},
			AutomountServiceAccountToken: new(false),
		},
	}
	created, err := kc.CoreV1().Pods(PodNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	return created, nil
}

// reportPodRunning writes the pod's IP and phase Running through the status
// subresource, as the kubelet does once the CNI plugin has returned the IP.
func reportPodRunning(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod, ips []netip.Addr, hostIP netip.Addr) error {
	now := metav1.NewTime(time.Now())
	podIPs := make([]corev1.PodIP, len(ips))
	for k, ip := range ips {
		podIPs[k] = corev1.PodIP{IP: ip.String()}
	}
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    hostIP.String(),
		HostIPs:   []corev1.HostIP{{IP: hostIP.String()}},
		PodIP:     podIPs[0].IP,
		PodIPs:    podIPs,
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := kc.CoreV1().Pods(PodNamespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s: %w", pod.Name, err)
	}
	return nil
}

// deletePod removes a Pod object at once (grace 0: there is no kubelet to
// confirm termination); a missing one is not an error.
func deletePod(ctx context.Context, kc kubernetes.Interface, name string) error {
	err := kc.CoreV1().Pods(PodNamespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s: %w", name, err)
	}
	return nil
}
