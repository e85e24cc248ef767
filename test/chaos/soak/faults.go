package soak

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/test/lab"
)

// Kinds of fault.
const (
	FaultMeshPod       = "kill-clustermesh-apiserver-pod"
	FaultAgentPod      = "kill-agent-pod"
	FaultKubelet       = "kill-kubelet"
	FaultContainerd    = "kill-containerd"
	FaultEtcd          = "kill-etcd"
	FaultKubeAPIServer = "kill-kube-apiserver"
	FaultLinkFlap      = "flap-underlay-link"
	FaultSecret        = "delete-and-readd-remote-secret"
	FaultRollAgents    = "roll-agent-daemonset"
)

// Kinds lists every fault the soak injects.
var Kinds = []string{FaultMeshPod, FaultAgentPod, FaultKubelet, FaultContainerd, FaultEtcd,
	FaultKubeAPIServer, FaultLinkFlap, FaultSecret, FaultRollAgents}

// Fault is one injected fault: what, where, from when the injection began
// until the lab had healed (the processes back, the pods rolled out).
type Fault struct {
	Kind   string
	Target string
	Start  time.Time
	End    time.Time
	// Detail says how long something was down, which PID was killed.
	Detail string
	Err    error
	// cutsNode and cutsCluster name what the fault cuts off the data path
	// on purpose: a node's underlay link, a cluster's mesh configuration.
	cutsNode, cutsCluster string
}

func (f Fault) String() string {
	s := fmt.Sprintf("%s %s %s (%.1fs) %s", f.Start.Format("15:04:05.000"), f.Kind, f.Target, f.End.Sub(f.Start).Seconds(), f.Detail)
	if f.Err != nil {
		s += " ERROR: " + f.Err.Error()
	}
	return s
}

// Cuts reports whether the fault takes flow off the data path by design:
// a flapped underlay link of either end's node, or a deleted mesh Secret
// of either end's cluster.
func (f Fault) Cuts(fl Flow) bool {
	switch {
	case f.cutsNode != "":
		return fl.From.Node == f.cutsNode || fl.To.Node == f.cutsNode
	case f.cutsCluster != "":
		return fl.From.Cluster == f.cutsCluster || fl.To.Cluster == f.cutsCluster
	}
	return false
}

// procOf is the process each process fault kills.
var procOf = map[string]string{FaultKubelet: lab.ProcKubelet, FaultContainerd: lab.ProcContainerd,
	FaultEtcd: lab.ProcEtcd, FaultKubeAPIServer: lab.ProcKubeAPIServer}

// healTimeout bounds how long the lab may take to heal after a fault.
const healTimeout = 3 * time.Minute

// inject runs one fault of kind on a target picked with rng and waits until
// the lab has healed: the killed process runs again, every cluster's
// podmesh is rolled out, and extra (when set) holds.
func inject(ctx context.Context, l *lab.Lab, rng *rand.Rand, kind string, extra func(context.Context) error) Fault {
	clusters := l.Clusters()
	c := clusters[rng.Intn(len(clusters))]
	nodes := c.NodeList()
	n := nodes[rng.Intn(len(nodes))]
	down := time.Duration(500+rng.Intn(4500)) * time.Millisecond
	f := Fault{Kind: kind, Start: time.Now()}
	var err error
	switch kind {
	case FaultMeshPod:
		f.Target = c.Name
		err = deletePod(ctx, l, c, "app.kubernetes.io/name=clustermesh-apiserver", "")
	case FaultAgentPod:
		f.Target = n.Name
		err = deletePod(ctx, l, c, "app.kubernetes.io/name=podmesh-agent", n.Name)
	case FaultKubelet, FaultContainerd, FaultEtcd, FaultKubeAPIServer:
		var pid int
		name := procOf[kind]
		if kind == FaultKubelet || kind == FaultContainerd {
			f.Target = n.Name
			pid, err = l.KillAndRestart(ctx, c, n, name, down)
			if err == nil {
				err = l.WaitNodeReady(ctx, n, healTimeout)
			}
		} else {
			f.Target = c.Name
			pid, err = l.KillAndRestart(ctx, c, nil, name, down)
		}
		f.Detail = fmt.Sprintf("pid %d down %.1fs", pid, down.Seconds())
	case FaultLinkFlap:
		f.Target, f.cutsNode = n.Name, n.Name
		port := l.UnderlayPort(n)
		f.Detail = fmt.Sprintf("down %.1fs", down.Seconds())
		if err = l.IP(ctx, l.Names.Underlay(), "link set "+port+" down"); err == nil {
			_ = sleepCtx(ctx, down)
			err = l.IP(context.WithoutCancel(ctx), l.Names.Underlay(), "link set "+port+" up")
		}
	case FaultSecret:
		f.Target, f.cutsCluster = c.Name, c.Name
		gone := time.Duration(2000+rng.Intn(10000)) * time.Millisecond
		f.Detail = fmt.Sprintf("absent %.1fs", gone.Seconds())
		if err = l.DeleteMeshSecret(ctx, c); err == nil {
			_ = sleepCtx(ctx, gone)
			err = l.ApplyMeshSecret(context.WithoutCancel(ctx), c)
		}
		if err == nil {
			// The cut lasts until c's agents have read the Secret again.
			err = l.WaitConverged(ctx, healTimeout)
		}
	case FaultRollAgents:
		f.Target = c.Name
		err = l.RestartAgents(ctx, c)
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	if err == nil {
		err = waitHealed(ctx, l)
	}
	if err == nil && extra != nil {
		err = extra(ctx)
	}
	f.End, f.Err = time.Now(), err
	return f
}

// deletePod deletes the pod matching selector in podmesh's namespace of c
// (on node when given), as a crash the Deployment or DaemonSet replaces.
func deletePod(ctx context.Context, l *lab.Lab, c *lab.Cluster, selector, node string) error {
	o := metav1.ListOptions{LabelSelector: selector}
	if node != "" {
		o.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, o)
	if err != nil {
		return fmt.Errorf("cluster %s: list %s: %w", c.Name, selector, err)
	}
	var victim *corev1.Pod
	for k := range pods.Items {
		if pods.Items[k].DeletionTimestamp == nil {
			victim = &pods.Items[k]
			break
		}
	}
	if victim == nil {
		return fmt.Errorf("cluster %s: no pod %s on %q", c.Name, selector, node)
	}
	zero := int64(0)
	podsAPI := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace)
	if err := podsAPI.Delete(ctx, victim.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("cluster %s: delete pod %s: %w", c.Name, victim.Name, err)
	}
	// Healed once a replacement is Ready (the rollout status may still
	// count the victim for a moment).
	deadline := time.Now().Add(healTimeout)
	for {
		list, err := podsAPI.List(ctx, o)
		if err == nil && slices.ContainsFunc(list.Items, func(p corev1.Pod) bool { return p.UID != victim.UID && podReady(&p) }) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster %s: no Ready replacement of pod %s %s after its deletion (%v)", c.Name, victim.Name, healTimeout, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitHealed waits until every cluster's API answers and its podmesh is
// rolled out again.
func waitHealed(ctx context.Context, l *lab.Lab) error {
	for _, c := range l.Clusters() {
		if err := l.WaitPodmeshRolledOut(ctx, c, healTimeout); err != nil {
			return err
		}
	}
	return nil
}
