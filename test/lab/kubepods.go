package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmesh/podmesh/test/kubetest"
)

// EchoApp is the label value (app=echo) and name of the echo Deployment.
const EchoApp = "echo"

// EchoDeployment is the application a real cluster runs for the
// connectivity tests: replicas of the echo server (image "echo"), spread
// evenly over the nodes, Ready once their TCP port accepts.
func (l *Lab) EchoDeployment(replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": EchoApp}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: EchoApp, Namespace: metav1.NamespaceDefault},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptrTo(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptrTo(int64(2)),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       corev1.LabelHostname,
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
						// A cordoned (draining) node is no spread domain.
						NodeTaintsPolicy: ptrTo(corev1.NodeInclusionPolicyHonor),
					}},
					Containers: []corev1.Container{{
						Name:            "echo",
						Image:           l.opts.Images.Ref("echo"),
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"-tcp=:" + itoa(ServeTCPPort), "-udp=:" + itoa(ServeUDPPort)},
						Ports: []corev1.ContainerPort{
							{Name: "tcp", ContainerPort: ServeTCPPort, Protocol: corev1.ProtocolTCP},
							{Name: "udp", ContainerPort: ServeUDPPort, Protocol: corev1.ProtocolUDP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(ServeTCPPort)}},
							PeriodSeconds: 1,
						},
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("1m"),
							corev1.ResourceMemory: resource.MustParse("8Mi"),
						}},
					}},
				},
			},
		},
	}
}

// DeployEcho applies the echo Deployment on cluster c with replicas pods
// and waits until all of them are Ready.
func (l *Lab) DeployEcho(ctx context.Context, c *Cluster, replicas int) error {
	t0 := time.Now()
	if err := l.ApplyObject(ctx, c, "echo", l.EchoDeployment(int32(replicas))); err != nil {
		return err
	}
	if err := l.WaitEchoReady(ctx, c, 2*time.Minute); err != nil {
		return err
	}
	l.progress("cluster %s: %d echo pods Ready %.1fs after apply", c.Name, replicas, time.Since(t0).Seconds())
	return nil
}

// WaitEchoReady waits until the echo Deployment is rolled out and exactly
// its replicas exist and are Ready (terminating pods aside).
func (l *Lab) WaitEchoReady(ctx context.Context, c *Cluster, timeout time.Duration) error {
	kc := c.Kube.Client
	return waitFor(ctx, timeout, 100*time.Millisecond, "echo pods of "+c.Name+" Ready", func() (bool, error) {
		d, err := kc.AppsV1().Deployments(metav1.NamespaceDefault).Get(ctx, EchoApp, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if err := deploymentRolledOut(d); err != nil {
			return false, fmt.Errorf("%w%s", err, l.podProblems(ctx, c, metav1.NamespaceDefault))
		}
		pods, err := l.EchoPods(ctx, c)
		if err != nil {
			return false, err
		}
		ready := 0
		for k := range pods {
			if podReady(&pods[k]) {
				ready++
			}
		}
		// The Deployment's status can lag a delete: count the pods.
		if int32(len(pods)) != *d.Spec.Replicas || int32(ready) != *d.Spec.Replicas {
			return false, fmt.Errorf("%d echo pods, %d Ready, want %d", len(pods), ready, *d.Spec.Replicas)
		}
		return true, nil
	})
}

// EchoPods lists the echo pods of cluster c that exist (not terminating),
// by name.
func (l *Lab) EchoPods(ctx context.Context, c *Cluster) ([]corev1.Pod, error) {
	list, err := c.Kube.Client.CoreV1().Pods(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: "app=" + EchoApp})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: list echo pods: %w", c.Name, err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

// KubePodRefs returns the Ready echo pods of the clusters (every cluster
// when none is given) as PodRefs whose NetNS is the network namespace of a
// process of the pod (/proc/<pid>/ns/net), so probes start inside the real
// pod.
func (l *Lab) KubePodRefs(ctx context.Context, clusters ...*Cluster) ([]PodRef, error) {
	if len(clusters) == 0 {
		clusters = l.Clusters()
	}
	var out []PodRef
	for _, c := range clusters {
		refs, err := readyPodRefs(ctx, c.Kube.Client, c.Name, metav1.NamespaceDefault, "app="+EchoApp)
		if err != nil {
			return nil, err
		}
		out = append(out, refs...)
	}
	return out, nil
}

// readyPodRefs lists the Ready pods of namespace ns in one cluster that
// match the label selector, by name, as PodRefs (IP6 set when the pod has
// an IPv6 address too).
func readyPodRefs(ctx context.Context, kc kubernetes.Interface, cluster, ns, selector string) ([]PodRef, error) {
	list, err := kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: list pods %s in %s: %w", cluster, selector, ns, err)
	}
	sort.Slice(list.Items, func(a, b int) bool { return list.Items[a].Name < list.Items[b].Name })
	var out []PodRef
	for _, p := range list.Items {
		if !podReady(&p) {
			continue
		}
		ref := PodRef{Cluster: cluster, Name: p.Name, Node: p.Spec.NodeName}
		for _, pip := range p.Status.PodIPs {
			ip, err := netip.ParseAddr(pip.IP)
			if err != nil {
				return nil, fmt.Errorf("pod %s/%s: IP %q: %w", cluster, p.Name, pip.IP, err)
			}
			if ip.Is4() && !ref.IP.IsValid() {
				ref.IP = ip
			} else if ip.Is6() && !ref.IP6.IsValid() {
				ref.IP6 = ip
			}
		}
		if !ref.IP.IsValid() {
			return nil, fmt.Errorf("pod %s/%s: no IPv4 address in %v", cluster, p.Name, p.Status.PodIPs)
		}
		if ref.NetNS, err = podNetNS(string(p.UID)); err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", cluster, p.Name, err)
		}
		out = append(out, ref)
	}
	return out, nil
}

// ClusterClient returns a client for a cluster of a recorded layout: its
// admin kubeconfig, dialling from inside its control-plane namespace.
func ClusterClient(cl ClusterLayout) (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", cl.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	cfg.Dial = kubetest.DialInNetNS(NetNSPath(cl.NetNS))
	return kubernetes.NewForConfig(cfg)
}

// LivePods returns the Ready echo pods each cluster of a recorded lab runs
// now.
func (lay *Layout) LivePods(ctx context.Context) ([]PodRef, error) {
	var out []PodRef
	for _, cl := range lay.Clusters {
		kc, err := ClusterClient(cl)
		if err != nil {
			return nil, err
		}
		refs, err := readyPodRefs(ctx, kc, cl.Name, metav1.NamespaceDefault, "app="+EchoApp)
		if err != nil {
			return nil, err
		}
		out = append(out, refs...)
	}
	return out, nil
}

// podNetNS finds a process of the pod with this UID by its cgroup (the
// kubelet's cgroupfs driver puts every container of the pod under
// .../pod<uid>/) and returns the path of its network namespace.
func podNetNS(uid string) (string, error) {
	want := "/pod" + uid + "/"
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return "", fmt.Errorf("list /proc: %w", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		found := false
		for sc.Scan() && !found {
			found = strings.Contains(sc.Text(), want)
		}
		f.Close()
		if found {
			return "/proc/" + strconv.Itoa(pid) + "/ns/net", nil
		}
	}
	return "", errors.New("no process of the pod found by its cgroup")
}

// KubeMatrix probes every Ready echo pod from every echo pod of the other
// clusters.
func (l *Lab) KubeMatrix(ctx context.Context) ([]MatrixCell, error) {
	refs, err := l.KubePodRefs(ctx)
	if err != nil {
		return nil, err
	}
	return Matrix(ctx, refs), nil
}

func ptrTo[T any](v T) *T { return &v }

// ReadyPodRefs returns the Ready pods of namespace ns in cluster c that
// match the label selector, by name, as PodRefs whose NetNS is the pod's
// own network namespace (found by its cgroup), so probes and DNS queries
// start inside the real pod.
func (l *Lab) ReadyPodRefs(ctx context.Context, c *Cluster, ns, selector string) ([]PodRef, error) {
	return readyPodRefs(ctx, c.Kube.Client, c.Name, ns, selector)
}
