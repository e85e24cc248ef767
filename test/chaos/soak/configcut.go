package soak

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/test/lab"
)

// meshConfigDir is where the agents and the clustermesh-apiserver mount the
// podmesh-clustermesh Secret (daemonset/base).
const meshConfigDir = "var/lib/podmesh/clustermesh"

// configCuts samples, in the mount namespaces of the processes themselves
// (through /proc/<pid>/root), which remote clusters' files every agent and
// every clustermesh-apiserver (the importer) see in their mesh Secret
// volume, and records each interval in which a file was missing.
//
// A deleted Secret reaches a pod's volume when the kubelet next refreshes it
// (on a pod sync, every 10–15 s), and so does the re-added one: the kubelet
// can empty the volume seconds after the Secret is back, when the fault
// itself has long healed. The withdrawal that follows is what the deletion
// asks for, delivered late. These intervals are the cut as the podmesh
// processes actually saw it, not as the API did: a withdrawal without one is
// still a finding.
type configCuts struct {
	cancel context.CancelFunc
	done   chan struct{}

	// mu protects everything below.
	mu sync.Mutex
	// open holds the start of the current gap of each holder and remote
	// ("importer c2" or "agent c2-n1", then the remote's name).
	open map[[2]string]time.Time
	gaps []configGap
	// samples counts the volume reads.
	samples int
}

// configGap is one interval in which holder's volume lacked remote's file.
type configGap struct {
	Holder, Remote string
	From, To       time.Time
}

func (g configGap) String() string {
	return fmt.Sprintf("%s lacked %s's file %s-%s", g.Holder, g.Remote, g.From.Format("15:04:05.000"), g.To.Format("15:04:05.000"))
}

func importerHolder(cluster string) string { return "importer " + cluster }
func agentHolder(node string) string       { return "agent " + node }

func startConfigCuts(ctx context.Context, l *lab.Lab, every time.Duration) *configCuts {
	ctx, cancel := context.WithCancel(ctx)
	cc := &configCuts{cancel: cancel, done: make(chan struct{}), open: map[[2]string]time.Time{}}
	var pids holderPIDs
	go func() {
		defer close(cc.done)
		for n := 0; sleepCtx(ctx, every) == nil; n++ {
			if n%20 == 0 || pids.stale() {
				pids = findHolderPIDs(l)
			}
			cc.sample(l, pids, time.Now())
		}
	}()
	return cc
}

// holderPIDs are the processes whose volume is read, by holder.
type holderPIDs map[string][]int

// stale reports whether a process found earlier has exited.
func (h holderPIDs) stale() bool {
	for _, pids := range h {
		for _, pid := range pids {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				return true
			}
		}
	}
	return len(h) == 0
}

// findHolderPIDs finds every node's podmesh-agent (among the processes in
// the node's network namespace) and every cluster's clustermesh-apiserver
// (by its --cluster-name; one lab runs at a time, under the lab lock).
func findHolderPIDs(l *lab.Lab) holderPIDs {
	out := holderPIDs{}
	for _, n := range l.Nodes() {
		if pids, err := l.AgentPIDs(n); err == nil {
			out[agentHolder(n.Name)] = pids
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "clustermesh-api" {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(cmdline, []byte{0}) {
			if name, ok := strings.CutPrefix(string(arg), "--cluster-name="); ok {
				out[importerHolder(name)] = append(out[importerHolder(name)], pid)
			}
		}
	}
	return out
}

// sample reads every holder's volume once: every other cluster's file must
// be there (the soak meshes every cluster with every other). A process
// that exited meanwhile says nothing (its replacement is found on the next
// refresh).
func (cc *configCuts) sample(l *lab.Lab, pids holderPIDs, now time.Time) {
	missing := map[[2]string]bool{}
	seen := map[string]bool{}
	for _, c := range l.Clusters() {
		holders := []string{importerHolder(c.Name)}
		for _, n := range c.NodeList() {
			holders = append(holders, agentHolder(n.Name))
		}
		for _, h := range holders {
			for _, pid := range pids[h] {
				root := filepath.Join("/proc", strconv.Itoa(pid), "root", meshConfigDir)
				if _, err := os.Stat(root); err != nil {
					continue // exited, or not yet mounted
				}
				seen[h] = true
				for _, r := range l.Clusters() {
					if r == c {
						continue
					}
					file, _, _, _ := certs.MeshSecretKeys(r.Name)
					// Stat follows the ..data symlink: a dangling one is
					// a file the kubelet is removing.
					if _, err := os.Stat(filepath.Join(root, file)); errors.Is(err, fs.ErrNotExist) {
						missing[[2]string{h, r.Name}] = true
					}
				}
			}
		}
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.samples++
	for k := range missing {
		if _, ok := cc.open[k]; !ok {
			cc.open[k] = now
		}
	}
	for k, from := range cc.open {
		if !missing[k] && seen[k[0]] {
			cc.gaps = append(cc.gaps, configGap{Holder: k[0], Remote: k[1], From: from, To: now})
			delete(cc.open, k)
		}
	}
}

// cuts reports whether holder's volume lacked remote's file (any remote's,
// when remote is "") around t: from cutBefore before a gap began until
// after past its end.
func cutByGap(gaps []configGap, holder, remote string, t time.Time, after time.Duration) bool {
	return slices.ContainsFunc(gaps, func(g configGap) bool {
		return g.Holder == holder && (remote == "" || g.Remote == remote) &&
			!t.Before(g.From.Add(-cutBefore)) && !t.After(g.To.Add(after))
	})
}

// stop ends the sampling and returns every gap, the open ones closed now.
func (cc *configCuts) stop() (samples int, gaps []configGap) {
	cc.cancel()
	<-cc.done
	cc.mu.Lock()
	defer cc.mu.Unlock()
	now := time.Now()
	for k, from := range cc.open {
		cc.gaps = append(cc.gaps, configGap{Holder: k[0], Remote: k[1], From: from, To: now})
	}
	slices.SortFunc(cc.gaps, func(a, b configGap) int { return a.From.Compare(b.From) })
	return cc.samples, slices.Clone(cc.gaps)
}
