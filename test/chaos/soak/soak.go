package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/test/lab"
)

// Config of one soak run.
type Config struct {
	// Seed picks the faults, their targets and durations.
	Seed int64
	// Duration of the fault phase; the end checks follow.
	Duration time.Duration
	// Rounds, when set, replaces Duration: that many rounds, each of which
	// injects every kind once in a seeded random order.
	Rounds int
	// MaxGap is the longest pause between two faults (default 2s).
	MaxGap time.Duration
	// Kinds are the faults to draw from (default Kinds).
	Kinds []string
	// SampleEvery is the period of the route-ownership sampler (default
	// 100ms).
	SampleEvery time.Duration
	// Traffic rates.
	Traffic TrafficOptions
	// Log receives one line per fault (optional).
	Log io.Writer
	// CoreDNSImage, when set, turns the services part on: CoreDNS in every
	// cluster, the echo pods exported from every cluster, their clusterset
	// name resolved continuously, the imports checked at the end. The lab
	// must hold the image (images.Options.BinDir).
	CoreDNSImage string
	// RepoDir is the checkout with daemonset/coredns and the lab's CoreDNS
	// manifest; default: found from the working directory.
	RepoDir string
	// LookupEvery is the period of each cluster's DNS lookups (default
	// 250ms).
	LookupEvery time.Duration
	// Journal, when set (services on), receives one line per change of an
	// imported EndpointSlice of the exported service in any cluster.
	Journal io.Writer
}

// Grace periods around a fault that cuts the data path on purpose: loss a
// moment before (the injection started) and after (routes and neighbours
// come back) counts as the cut's.
const (
	cutBefore   = time.Second
	cutAfterUDP = 3 * time.Second
	cutAfterTCP = 20 * time.Second // a stream notices a dead path late
)

// Report is the result of a run.
type Report struct {
	Seed     int64
	Duration time.Duration
	Faults   []Fault
	Traffic  TrafficReport
	// LostCut were lost while a fault cut their flow on purpose;
	// LostUnexplained at any other time.
	LostCut, LostUnexplained int
	// Unexplained lists flows with unexplained loss (and when).
	Unexplained []string
	// BreaksCut and BreaksUnexplained are TCP streams that broke.
	BreaksCut         int
	BreaksUnexplained []Break
	// Ownership sampler results.
	Samples, SampleReadErrs int
	Violations              []string
	// ConvergeErr is the end state's difference from the desired one.
	ConvergeErr error
	// TunnelErr is how the neighbour and FDB entries on podmesh_vxlan
	// differ from what the agents' desired state implies (nil: equal on
	// every node); Tunnel counts what was compared.
	TunnelErr error
	Tunnel    string
	// Leaks are links, pins, EndpointSlices left behind.
	Leaks []string
	// Respawns are the kube-controller-managers and kube-schedulers that
	// exited (lost their lease during a control-plane fault) and were
	// restarted, as a kubelet restarts static pods.
	Respawns []string
	// Services is whether the services part ran; Lookups counts the DNS
	// lookups, BadLookupsCut those that failed or answered wrong during a
	// cut, BadLookups the others; ImportsErr is the end check.
	Services      bool
	Lookups       int
	LookupTimes   LookupTimes
	BadLookupsCut int
	BadLookups    []BadLookup
	ImportsErr    error
	// ConfigSamples counts the reads of the podmesh processes' mesh Secret
	// volumes; ConfigGaps are the intervals in which a remote's file was
	// missing there, LateGaps those outside every Secret fault of the
	// cluster (the kubelet refreshed the volume after the fault had
	// healed). LateExplained counts the datagrams, breaks and lookups
	// that only such a late gap explains.
	ConfigSamples int
	ConfigGaps    []configGap
	LateGaps      []configGap
	LateExplained int
}

// Counts returns how many faults of each kind ran.
func (r *Report) Counts() map[string]int {
	m := map[string]int{}
	for _, f := range r.Faults {
		m[f.Kind]++
	}
	return m
}

// Failures lists everything the run found wrong (empty: a clean run).
func (r *Report) Failures() []string {
	var out []string
	for _, f := range r.Faults {
		if f.Err != nil {
			out = append(out, "fault did not heal: "+f.String())
		}
	}
	if r.LostUnexplained > 0 {
		out = append(out, fmt.Sprintf("%d datagrams lost while no fault cut their flow: %s", r.LostUnexplained, strings.Join(r.Unexplained, "; ")))
	}
	for _, b := range r.BreaksUnexplained {
		out = append(out, fmt.Sprintf("TCP stream %s broke at %s while no fault cut it: %s", b.Flow, b.At.Format("15:04:05.000"), b.Err))
	}
	for _, v := range r.Violations {
		out = append(out, "route to a prefix its cluster does not own: "+v)
	}
	if r.ConvergeErr != nil {
		out = append(out, "end state differs from the desired state: "+r.ConvergeErr.Error())
	}
	if r.TunnelErr != nil {
		out = append(out, "neighbour/FDB entries differ from the desired state: "+r.TunnelErr.Error())
	}
	for _, lk := range r.Leaks {
		out = append(out, "leak: "+lk)
	}
	for k, b := range r.BadLookups {
		if k == maxViolations {
			out = append(out, fmt.Sprintf("... and %d more bad lookups", len(r.BadLookups)-k))
			break
		}
		out = append(out, fmt.Sprintf("lookup of %s from %s at %s (%.0f ms) while no fault cut it: %s (faults then: %s)", ExportedName, b.From, b.At.Format("15:04:05.000"),
			b.Took.Seconds()*1000, b.Got, r.faultsAt(b.At)))
	}
	if r.ImportsErr != nil {
		out = append(out, "imports differ from the exports: "+r.ImportsErr.Error())
	}
	return out
}

// Summary is a human-readable account of the run.
func (r *Report) Summary() string {
	var b strings.Builder
	sent, lost := r.Traffic.Sent()
	fmt.Fprintf(&b, "seed %d, faults for %s, %d faults:", r.Seed, r.Duration.Round(time.Second), len(r.Faults))
	counts := r.Counts()
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s=%d", k, counts[k])
	}
	fmt.Fprintf(&b, "\ntraffic %s: %d UDP flows, %d datagrams sent, %d lost (%d while a fault cut the flow on purpose, %d unexplained); %d TCP streams, %d lines echoed in order, %d breaks (%d during a cut, %d unexplained)",
		r.Traffic.Duration.Round(time.Second), len(r.Traffic.UDP), sent, lost, r.LostCut, r.LostUnexplained,
		len(r.Traffic.UDP), r.Traffic.TCPLines, len(r.Traffic.Breaks), r.BreaksCut, len(r.BreaksUnexplained))
	fmt.Fprintf(&b, "\nownership: %d node samples (%d skipped while pins were replaced), %d violations", r.Samples, r.SampleReadErrs, len(r.Violations))
	if r.Services {
		fmt.Fprintf(&b, "\nDNS: %d lookups of %s, %d failed or wrong during a cut, %d unexplained; imports match exports at the end: %v",
			r.Lookups, ExportedName, r.BadLookupsCut, len(r.BadLookups), r.ImportsErr == nil)
		t := r.LookupTimes
		fmt.Fprintf(&b, "\nDNS answer times: p50 %s, p99 %s, p99.9 %s, max %s; %d answers slower than %s (a pod's resolver waits %s)",
			t.P50.Round(time.Millisecond), t.P99.Round(time.Millisecond), t.P999.Round(time.Millisecond), t.Max.Round(time.Millisecond),
			len(t.Slow), slowAnswer, resolverTimeout)
		for k, s := range t.Slow {
			if k == maxViolations {
				fmt.Fprintf(&b, "\n  ... and %d more", len(t.Slow)-k)
				break
			}
			fmt.Fprintf(&b, "\n  slow answer %s", s)
		}
	} else {
		b.WriteString("\nDNS: services part off (no CoreDNS image)")
	}
	fmt.Fprintf(&b, "\nmesh Secret volumes: %d samples, %d intervals with a remote's file missing, %d of them outside the Secret fault that caused them (a late kubelet refresh); %d lost datagrams, breaks and lookups explained only by those",
		r.ConfigSamples, len(r.ConfigGaps), len(r.LateGaps), r.LateExplained)
	for _, g := range r.LateGaps {
		fmt.Fprintf(&b, "\n  late: %s", g)
	}
	fmt.Fprintf(&b, "\ncontrol-plane components restarted by the supervisor: %d", len(r.Respawns))
	for _, s := range r.Respawns {
		fmt.Fprintf(&b, "\n  %s", s)
	}
	fmt.Fprintf(&b, "\nend state: converged=%v, neighbour/FDB as desired=%v (%s), leaks=%d", r.ConvergeErr == nil, r.TunnelErr == nil, r.Tunnel, len(r.Leaks))
	return b.String()
}

// Run soaks a converged real lab: traffic between every pair of echo pods
// of different clusters, random faults for cfg.Duration, then the end
// checks. It returns an error only when it could not run; what the run
// found is in the report (Failures).
func Run(ctx context.Context, l *lab.Lab, cfg Config) (*Report, error) {
	if cfg.MaxGap == 0 {
		cfg.MaxGap = 2 * time.Second
	}
	if len(cfg.Kinds) == 0 {
		cfg.Kinds = Kinds
	}
	if cfg.SampleEvery == 0 {
		cfg.SampleEvery = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.LookupEvery == 0 {
		cfg.LookupEvery = 250 * time.Millisecond
	}
	rng := rand.New(rand.NewSource(cfg.Seed))
	eps, err := Endpoints(ctx, l)
	if err != nil {
		return nil, err
	}
	rep := &Report{Seed: cfg.Seed, Services: cfg.CoreDNSImage != ""}
	var dns map[string]Endpoint
	var probes *dnsProbes
	if rep.Services {
		if cfg.RepoDir == "" {
			if cfg.RepoDir, err = repoDir(); err != nil {
				return nil, err
			}
		}
		if dns, err = setupServices(ctx, l, cfg.RepoDir, cfg.CoreDNSImage, eps); err != nil {
			return nil, err
		}
	}
	before, err := takeSnapshot(ctx, l)
	if err != nil {
		return nil, err
	}
	traffic, err := StartTraffic(ctx, eps, cfg.Traffic)
	if err != nil {
		return nil, err
	}
	// With services on, a fault has healed once every cluster resolves the
	// exported name to every echo pod again.
	var healed func(context.Context) error
	if rep.Services && cfg.Journal != nil {
		journal, err := startSliceJournal(ctx, l, cfg.Journal)
		if err != nil {
			return nil, err
		}
		defer journal.stop()
	}
	if rep.Services {
		probes = startDNSProbes(ctx, eps, dns, cfg.LookupEvery)
		healed = func(ctx context.Context) error { return waitImports(ctx, eps, dns) }
	}
	owners := startOwnership(ctx, l, cfg.SampleEvery)
	configs := startConfigCuts(ctx, l, cfg.SampleEvery)
	sup, err := startSupervisor(ctx, l)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var round []int // what is left of the current round, as indices into Kinds
	for rounds := 0; ctx.Err() == nil; {
		if len(round) == 0 {
			if cfg.Rounds > 0 && rounds == cfg.Rounds || cfg.Rounds == 0 && time.Since(t0) >= cfg.Duration {
				break
			}
			round = rng.Perm(len(cfg.Kinds))
			rounds++
		}
		if cfg.Rounds == 0 && time.Since(t0) >= cfg.Duration {
			break
		}
		kind := cfg.Kinds[round[0]]
		round = round[1:]
		f := inject(ctx, l, rng, kind, healed)
		rep.Faults = append(rep.Faults, f)
		fmt.Fprintf(cfg.Log, "fault %d: %s\n", len(rep.Faults), f)
		if f.Err != nil {
			break // the lab did not heal: the rest would only cascade
		}
		_ = sleepCtx(ctx, time.Duration(rng.Int63n(int64(cfg.MaxGap))))
	}
	rep.Duration = time.Since(t0)
	rep.Samples, rep.SampleReadErrs, rep.Violations = owners.stop()
	rep.ConfigSamples, rep.ConfigGaps = configs.stop()
	rep.Respawns = sup.stop()
	rep.ConvergeErr = l.WaitConverged(ctx, healTimeout)
	rep.TunnelErr = l.WaitTunnelNeighbours(ctx, tunnelTimeout)
	rep.Tunnel = tunnelCensus(l)
	rep.Traffic = traffic.Stop()
	var bad []BadLookup
	if rep.Services {
		rep.Lookups, rep.LookupTimes, bad = probes.stop()
		rep.ImportsErr = waitImports(ctx, eps, dns)
	}
	rep.attribute(bad)
	rep.Leaks = waitNoLeaks(ctx, l, before, 2*time.Minute)
	return rep, ctx.Err()
}

// attribute splits loss and breaks into those a cutting fault explains and
// the rest. A cut is a fault that cuts the flow on purpose (Fault.Cuts)
// from cutBefore before it began until after past its end, or a gap in
// which the mesh Secret volume of an end's agent lacked the other end's
// cluster (configCuts), over the same margins.
func (r *Report) attribute(bad []BadLookup) {
	r.LateGaps = nil
	for _, g := range r.ConfigGaps {
		cluster := strings.TrimPrefix(strings.TrimPrefix(g.Holder, "importer "), "agent ")
		if !slices.ContainsFunc(r.Faults, func(f Fault) bool {
			return f.cutsCluster != "" && (f.cutsCluster == cluster || strings.HasPrefix(cluster, f.cutsCluster+"-")) &&
				!g.From.Before(f.Start) && !g.From.After(f.End)
		}) {
			r.LateGaps = append(r.LateGaps, g)
		}
	}
	byFault := func(fl Flow, at time.Time, after time.Duration) bool {
		for _, f := range r.Faults {
			if f.Cuts(fl) && !at.Before(f.Start.Add(-cutBefore)) && !at.After(f.End.Add(after)) {
				return true
			}
		}
		return false
	}
	byGap := func(fl Flow, at time.Time, after time.Duration) bool {
		return cutByGap(r.ConfigGaps, agentHolder(fl.From.Node), fl.To.Cluster, at, after) ||
			cutByGap(r.ConfigGaps, agentHolder(fl.To.Node), fl.From.Cluster, at, after)
	}
	cut := func(fl Flow, at time.Time, after time.Duration) bool {
		if byFault(fl, at, after) {
			return true
		}
		if byGap(fl, at, after) {
			r.LateExplained++
			return true
		}
		return false
	}
	for _, fr := range r.Traffic.UDP {
		var unexplained []time.Time
		for _, at := range fr.LostAt {
			if cut(fr.Flow, at, cutAfterUDP) {
				r.LostCut++
			} else {
				unexplained = append(unexplained, at)
			}
		}
		r.LostUnexplained += len(unexplained)
		if len(unexplained) > 0 {
			r.Unexplained = append(r.Unexplained, fmt.Sprintf("%s: %d lost between %s and %s (faults then: %s)", fr.Flow, len(unexplained),
				unexplained[0].Format("15:04:05.000"), unexplained[len(unexplained)-1].Format("15:04:05.000"), r.faultsAt(unexplained[0])))
		}
	}
	for _, b := range r.Traffic.Breaks {
		if cut(b.Flow, b.At, cutAfterTCP) {
			r.BreaksCut++
		} else {
			b.Err += " (faults then: " + r.faultsAt(b.At) + ")"
			r.BreaksUnexplained = append(r.BreaksUnexplained, b)
		}
	}
	// A lookup goes from the pod to its cluster's CoreDNS pod (a flapped
	// link of either's node cuts it); what CoreDNS answers is what that
	// cluster's importer imported, which a deleted Secret of that cluster
	// withdraws (the Secret holds its credentials for the remotes), as its
	// importer's volume shows it. Another cluster's Secret configures only
	// that cluster's own agents and importer: its deletion withdraws
	// nothing the querier's cluster imports.
	for _, b := range bad {
		switch {
		case byFault(Flow{From: b.From, To: b.DNS}, b.At, cutAfterUDP):
			r.BadLookupsCut++
		case cutByGap(r.ConfigGaps, importerHolder(b.From.Cluster), "", b.At, cutAfterUDP):
			r.BadLookupsCut++
			r.LateExplained++
		default:
			r.BadLookups = append(r.BadLookups, b)
		}
	}
}

// tunnelTimeout bounds the wait for the neighbour and FDB entries after
// convergence: three of the agents' full passes (every 10 s), the one that
// prunes what a withdrawn prefix left in vxlan mode.
const tunnelTimeout = 30 * time.Second

// tunnelCensus counts what the neighbour/FDB check compared on every node.
func tunnelCensus(l *lab.Lab) string {
	var nodes, devs, fdb, perm, noarp, other int
	for _, n := range l.Nodes() {
		nodes++
		st, err := lab.ReadTunnelState(n.NetNS)
		if err != nil {
			return err.Error()
		}
		if st.Exists {
			devs++
		}
		fdb += len(st.FDB)
		for _, e := range st.Neigh {
			switch {
			case e.State&netlink.NUD_PERMANENT != 0:
				perm++
			case e.State&netlink.NUD_NOARP != 0:
				noarp++
			default:
				other++
			}
		}
	}
	return fmt.Sprintf("%d nodes, %d with %s: %d FDB entries, %d permanent, %d noarp and %d other neighbour entries",
		nodes, devs, lab.TunnelDevice, fdb, perm, noarp, other)
}

// repoDir finds the checkout (daemonset/coredns) from the working
// directory.
func repoDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "daemonset", "coredns", "kustomization.yaml")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find daemonset/coredns: not below a podmesh checkout (set Config.RepoDir)")
		}
		dir = parent
	}
}

// faultsAt names the faults in progress at (or ending within 5s before) t.
func (r *Report) faultsAt(t time.Time) string {
	var out []string
	for _, f := range r.Faults {
		if !t.Before(f.Start) && !t.After(f.End.Add(5*time.Second)) {
			out = append(out, f.Kind+" "+f.Target)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
