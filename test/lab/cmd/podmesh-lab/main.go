// Command podmesh-lab runs the podmesh multi-cluster lab: real Kubernetes
// clusters on one machine (a control plane per cluster; containerd,
// kube-proxy and a kubelet per node, each node a network namespace), podmesh
// installed on each from daemonset/ with kubectl, echo pods as a Deployment.
//
//	podmesh-lab up [--clusters 3 --nodes 2 --pods 2 --mode ebpf]   bring a lab up (returns when it is ready)
//	podmesh-lab status                                             clusters, nodes, pods and every agent's view
//	podmesh-lab matrix                                             probe every pod from every other cluster's pods
//	podmesh-lab exec <netns|role> -- cmd ...                       run a command inside a lab namespace
//	podmesh-lab exec <cluster>/[<ns>/]<pod> -- cmd ...             kubectl exec into a pod
//	podmesh-lab down                                               remove everything the lab created
//
// Every command takes --prefix (default podmesh-lab) and --state-root.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/test/lab"
)

const usage = `usage: podmesh-lab <command> [flags]

commands:
  up       bring a lab up: N real clusters x M real nodes, podmesh installed from
           daemonset/, P echo pods per node (returns once ready; --foreground
           keeps it in this terminal until Ctrl-C)
  status   show clusters, nodes, pods and what every agent reports
  list     list the labs under the state root and whether their supervisor runs
  matrix   probe every pod from every pod of the other clusters
  probe    probe one address from one lab namespace: probe <netns|role> <ip[:port]>
  exec     run a command in a lab namespace: exec <netns|role> -- cmd [args]
           (roles: ul, c1-cp, c1-n1; nsenter --net), or in a pod:
           exec <cluster>/[<namespace>/]<pod> -- cmd [args] (kubectl exec)
  down     remove everything of the lab: processes, namespaces, bpffs, state
           (also after a crash; finds leftovers by the lab prefix)

common flags: --prefix (default podmesh-lab), --state-root (default /run/podmesh-lab)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "up":
		err = cmdUp(args)
	case "down":
		err = cmdDown(args)
	case "status":
		err = cmdStatus(args)
	case "list":
		err = cmdList(args)
	case "matrix":
		err = cmdMatrix(args)
	case "probe":
		err = cmdProbe(args)
	case "exec":
		err = cmdExec(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "podmesh-lab %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

type common struct {
	prefix, stateRoot string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.prefix, "prefix", envOr("PODMESH_LAB_PREFIX", lab.DefaultPrefix), "lab prefix: starts every name the lab creates")
	fs.StringVar(&c.stateRoot, "state-root", lab.DefaultStateRoot, "directory holding the lab's state directory")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (c *common) stateDir() string { return filepath.Join(c.stateRoot, c.prefix) }

func newLogger(out io.Writer, debug bool) *logrus.Logger {
	l := logrus.New()
	l.Out = out
	l.Formatter = &logrus.TextFormatter{FullTimestamp: true}
	if debug {
		l.Level = logrus.DebugLevel
	}
	return l
}

// readyLine is what a background supervisor writes on its status pipe once
// the lab is up; any other line is progress, copied to the user.
const readyLine = "\x00ready"

func cmdUp(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	var c common
	c.register(fs)
	clusters := fs.Int("clusters", 3, "number of clusters")
	nodes := fs.Int("nodes", 2, "nodes per cluster")
	pods := fs.Int("pods", 2, "pods per node")
	mode := fs.String("mode", lab.ModeEBPF, "routing mode of the agents: ebpf, vxlan or native")
	binDir := fs.String("bin-dir", "", "directory with etcd and the Kubernetes binaries of make tools (default: bin/ of the checkout, or $PODMESH_BIN); the images are built into <bin-dir>/images from the podmesh checkout in the working directory")
	imgDir := fs.String("images-dir", "", "where the image archives are built (default: <bin-dir>/images)")
	foreground := fs.Bool("foreground", false, "stay in the foreground; Ctrl-C tears the lab down")
	dualStack := fs.Bool("dual-stack", false, "dual-stack clusters: pods get IPv6 addresses too (fd00:10:<cluster>:<node>::/64 per node)")
	noMesh := fs.Bool("no-mesh", false, "real clusters and echo pods, but no podmesh (tests the lab itself)")
	statusFD := fs.Int("status-fd", 0, "internal: report progress and readiness on this fd")
	_ = fs.Parse(args)
	if err := lab.ValidatePrefix(c.prefix); err != nil {
		return err
	}
	if *binDir == "" {
		if exe, err := os.Executable(); err == nil {
			// The lab binary lives next to the tools in bin/.
			if _, err := os.Stat(filepath.Join(filepath.Dir(exe), "kubelet")); err == nil {
				*binDir = filepath.Dir(exe)
			}
		}
	}
	if !*foreground {
		return upBackground(c, args)
	}

	progress := io.Writer(os.Stdout)
	var status *os.File
	if *statusFD > 0 {
		status = os.NewFile(uintptr(*statusFD), "status")
		progress = status
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := os.MkdirAll(c.stateRoot, 0o755); err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(c.stateRoot, c.prefix+".lab.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := newLogger(logFile, false)
	o := lab.Options{
		Prefix: c.prefix, StateRoot: c.stateRoot, BinDir: *binDir, RoutingMode: *mode,
		Log: log, Progress: progress, DualStack: *dualStack,
	}
	var l *lab.Lab
	fmt.Fprintln(progress, "building the images (agent, clustermesh-apiserver, pause, echo; cached)")
	if *imgDir == "" {
		*imgDir = imagesDir(*binDir)
	}
	o.Images, err = lab.BuildImages(ctx, *imgDir)
	if err == nil {
		l, err = lab.Up(ctx, o, lab.Topology{Clusters: *clusters, Nodes: *nodes, Pods: *pods, NoMesh: *noMesh})
	}
	if err != nil {
		if status != nil {
			// The lab (and with it the log files) is gone: tell the
			// waiting `up` directly.
			fmt.Fprintf(status, "error: %v\n", err)
		}
		return err
	}
	if status != nil {
		fmt.Fprintln(status, readyLine)
		status.Close()
	} else {
		fmt.Printf("lab %s is up; Ctrl-C tears it down\n", c.prefix)
	}
	<-ctx.Done()
	log.Info("signal received, tearing the lab down")
	// Close removes the log files too, as down does.
	return l.Close()
}

// upBackground re-executes `up --foreground` as a detached supervisor (its
// own session, so the lab outlives this shell command), relays its progress
// and returns once it reports the lab ready, or with its error.
func upBackground(c common, args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	if err := os.MkdirAll(c.stateRoot, 0o755); err != nil {
		return err
	}
	errPath := filepath.Join(c.stateRoot, c.prefix+".supervisor.log")
	errFile, err := os.OpenFile(errPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer errFile.Close()
	cmd := exec.Command(exe, append([]string{"up", "--foreground", "--status-fd=3"}, args...)...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = errFile, errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if sc.Text() == readyLine {
			_ = cmd.Process.Release()
			return nil
		}
		fmt.Println(sc.Text())
	}
	// The pipe closed without "ready": the supervisor failed (its error is
	// among the lines above). Its stderr file may be unlinked by its own
	// teardown already; read it through our handle.
	werr := cmd.Wait()
	_, _ = errFile.Seek(0, io.SeekStart)
	data, _ := io.ReadAll(errFile)
	return fmt.Errorf("lab supervisor failed (%v): %s", werr, strings.TrimSpace(string(data)))
}

func cmdDown(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	lo, err := lab.Discover(c.prefix, c.stateRoot)
	if err != nil && lo.Empty() {
		return err
	}
	if lo.Empty() {
		fmt.Printf("lab %s: nothing to remove\n", c.prefix)
		return nil
	}
	fmt.Printf("lab %s: removing %s\n", c.prefix, lo)
	if err := lab.Down(c.prefix, c.stateRoot, newLogger(os.Stderr, false)); err != nil {
		return err
	}
	fmt.Printf("lab %s: removed\n", c.prefix)
	return nil
}

func readLayout(c common) (*lab.State, error) {
	st, err := lab.ReadState(c.stateDir())
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w (is it up?)", c.prefix, err)
	}
	if st.Layout == nil {
		return nil, fmt.Errorf("lab %s is not ready yet", c.prefix)
	}
	return st, nil
}

func cmdStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	st, err := readLayout(c)
	if err != nil {
		return err
	}
	owner := "running"
	if !st.OwnerAlive() {
		owner = "DEAD (run down)"
	}
	fmt.Printf("lab %s: routing mode %s, supervisor pid %d %s, state %s\n\n", c.prefix, st.Layout.RoutingMode, st.OwnerPID, owner, c.stateDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tPOD CIDRS\tAPI SERVER\tCLUSTERMESH-APISERVER (NodePort)")
	for _, cl := range st.Layout.Clusters {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", cl.Name, cl.ID, strings.Join(cl.PodCIDRs, ","), cl.APIServer, strings.Join(cl.MeshEndpoints, " "))
	}
	tw.Flush()
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tINTERNAL IP\tPOD CIDRS\tAGENT: REMOTE CLUSTERS")
	for _, cl := range st.Layout.Clusters {
		for _, n := range cl.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.NetNS, n.IP, n.PodCIDR, agentSummary(ctx, n))
		}
	}
	tw.Flush()
	pods, err := st.Layout.LivePods(ctx)
	if err != nil {
		return err
	}
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tECHO POD (Ready)\tIP")
	for _, p := range pods {
		ips := p.IP.String()
		if p.IP6.IsValid() {
			ips += "," + p.IP6.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Cluster, p.Name, ips)
	}
	return tw.Flush()
}

func agentSummary(ctx context.Context, n lab.NodeLayout) string {
	st, err := lab.FetchAgentStatus(ctx, n.NetNS, n.StatusListen)
	if err != nil {
		return "unreachable: " + err.Error()
	}
	var parts []string
	for _, r := range st.Mesh.Remotes {
		s := r.Cluster + " ready"
		if !r.Ready {
			s = r.Cluster + " NOT READY (" + r.Reason + ")"
		}
		parts = append(parts, fmt.Sprintf("%s, %d prefixes", s, r.Prefixes))
	}
	if len(parts) == 0 {
		return "no remotes"
	}
	return strings.Join(parts, "; ")
}

func cmdList(args []string) error {
	fs := flag.NewFlagSet("list", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	ents, err := os.ReadDir(c.stateRoot)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Println("no labs")
		return nil
	}
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tSUPERVISOR\tCREATED\tSHAPE")
	for _, e := range ents {
		if !e.IsDir() || lab.ValidatePrefix(e.Name()) != nil {
			continue
		}
		st, err := lab.ReadState(filepath.Join(c.stateRoot, e.Name()))
		if err != nil {
			fmt.Fprintf(tw, "%s\t?\t?\t%v\n", e.Name(), err)
			continue
		}
		owner := fmt.Sprintf("pid %d", st.OwnerPID)
		if !st.OwnerAlive() {
			owner = "dead (run down)"
		}
		shape := "starting"
		if st.Layout != nil {
			nodes := 0
			for _, cl := range st.Layout.Clusters {
				nodes += len(cl.Nodes)
			}
			shape = fmt.Sprintf("%d clusters, %d nodes, %s", len(st.Layout.Clusters), nodes, st.Layout.RoutingMode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name(), owner, st.Created.Format(time.RFC3339), shape)
	}
	return tw.Flush()
}

func cmdMatrix(args []string) error {
	fs := flag.NewFlagSet("matrix", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	st, err := readLayout(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := st.Layout.LivePods(ctx)
	if err != nil {
		return err
	}
	cells := lab.Matrix(ctx, pods)
	lab.WriteMatrix(os.Stdout, cells)
	err = lab.MatrixErrors(cells)
	if v6 := lab.AsIPv6(pods); len(v6) > 0 {
		fmt.Println("\nIPv6:")
		cells6 := lab.Matrix(ctx, v6)
		lab.WriteMatrix(os.Stdout, cells6)
		err = errors.Join(err, lab.MatrixErrors(cells6))
	}
	return err
}

// resolveNS accepts a full lab netns name or a role (c1-n1) and refuses
// anything that is not this lab's.
func resolveNS(c common, s string) (string, error) {
	names := lab.Names{Prefix: c.prefix}
	if names.Owns(s) {
		return s, nil
	}
	if full := c.prefix + "-" + s; names.Owns(full) {
		return full, nil
	}
	return "", fmt.Errorf("%q is not a namespace of lab %s (want e.g. c1-n1, c1-cp, ul)", s, c.prefix)
}

func cmdProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		return errors.New("usage: probe <netns|role> <ip[:port]>")
	}
	ns, err := resolveNS(c, fs.Arg(0))
	if err != nil {
		return err
	}
	target, err := netip.ParseAddrPort(fs.Arg(1))
	if err != nil {
		ip, err2 := netip.ParseAddr(fs.Arg(1))
		if err2 != nil {
			return fmt.Errorf("target %q: %w", fs.Arg(1), err)
		}
		target = netip.AddrPortFrom(ip, lab.ServeTCPPort)
	}
	res, err := lab.Probe(context.Background(), ns, target, 5*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("%s -> %s: ok, receiver saw %s, connect+reply %s\n", ns, target, res.Seen, res.RTT)
	return nil
}

func cmdExec(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ExitOnError)
	var c common
	c.register(fs)
	_ = fs.Parse(args)
	rest := fs.Args()
	if len(rest) < 2 {
		return errors.New("usage: exec <netns|role> -- cmd [args]")
	}
	target := rest[0]
	rest = rest[1:]
	if rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return errors.New("exec: no command")
	}
	if cluster, pod, ok := strings.Cut(target, "/"); ok {
		return kubectlExec(c, cluster, pod, rest)
	}
	ns, err := resolveNS(c, target)
	if err != nil {
		return err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return err
	}
	argv := append([]string{"nsenter", "--net=" + lab.NetNSPath(ns), "--"}, rest...)
	return syscall.Exec(nsenter, argv, os.Environ())
}

// kubectlExec runs a command in a pod of a real lab's cluster with kubectl
// exec (pod may be namespace/name; default namespace "default").
func kubectlExec(c common, cluster, pod string, cmd []string) error {
	st, err := readLayout(c)
	if err != nil {
		return err
	}
	ns := "default"
	if strings.Contains(pod, "/") {
		ns, pod, _ = strings.Cut(pod, "/")
	}
	for _, cl := range st.Layout.Clusters {
		if cl.Name != cluster {
			continue
		}
		nsenter, err := exec.LookPath("nsenter")
		if err != nil {
			return err
		}
		argv := append([]string{"nsenter", "--net=" + lab.NetNSPath(cl.NetNS), "--", filepath.Join(st.Layout.BinDir, "kubectl"),
			"--kubeconfig", cl.Kubeconfig, "-n", ns, "exec", pod, "--"}, cmd...)
		return syscall.Exec(nsenter, argv, os.Environ())
	}
	return fmt.Errorf("lab %s has no cluster %q", c.prefix, cluster)
}

// imagesDir is where the CLI keeps the image archives: next to the binaries.
func imagesDir(binDir string) string {
	if binDir == "" {
		binDir = "bin"
	}
	return filepath.Join(binDir, "images")
}
