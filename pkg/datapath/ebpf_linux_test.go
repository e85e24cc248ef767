package datapath_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/bpf"
	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// repairIpcacheEntry deletes target from a1's pinned ipcache behind the
// reconciler's back (through a second loader on the same pins) and waits for
// the reconciler to put it back.
func repairIpcacheEntry(t *testing.T, m *mesh, target netip.Prefix) {
	t.Helper()
	dp, err := bpf.Load(bpf.Options{PinDir: m.bpfRoot[m.a1], LocalClusterID: m.a1.ClusterID})
	require.NoError(t, err)
	defer dp.Close()
	entries, err := dp.Entries()
	require.NoError(t, err)
	var rest []bpf.Entry
	found := false
	for _, e := range entries {
		if e.Prefix == target {
			found = true
			continue
		}
		rest = append(rest, e)
	}
	require.True(t, found, "%s is in the ipcache", target)
	_, err = dp.Sync(rest, true)
	require.NoError(t, err)
	has := func() bool {
		es, err := dp.Entries()
		if err != nil {
			return false
		}
		for _, e := range es {
			if e.Prefix == target && e.TunnelEndpoint == m.b1.IP && e.ClusterID == 2 {
				return true
			}
		}
		return false
	}
	require.False(t, has(), "entry deleted by hand")
	waitFor(t, convergeWithin, has, func() string { return "ipcache entry " + target.String() + " not repaired" })
}

// detachProgramAndWaitForRepair detaches a1's program from podmesh_vxlan by
// hand (through its pinned TCX link) and waits until a program is attached
// at the device's TCX egress again.
func detachProgramAndWaitForRepair(t *testing.T, m *mesh) {
	t.Helper()
	vx, err := m.a1.NS.NL.LinkByName(datapath.DeviceName)
	require.NoError(t, err)
	idx := vx.Attrs().Index
	l, err := link.LoadPinnedLink(fmt.Sprintf("%s/tcx_egress_%d", m.bpfRoot[m.a1], idx), nil)
	require.NoError(t, err)
	require.NoError(t, l.Detach())
	l.Close()
	attached := func() bool {
		n := -1
		require.NoError(t, m.a1.NS.Do(func() error {
			res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				return err
			}
			n = len(res.Programs)
			return nil
		}))
		return n > 0
	}
	require.False(t, attached(), "program detached by hand")
	waitFor(t, convergeWithin, attached, func() string { return "program not attached again" })
}

// TestEBPFAgentRestartsLoseNoPackets restarts a1's reconciler three times
// (Run stops: bpf Close, pins stay; a new Reconciler: bpf Load adopts the
// pins, Attach swaps the program on the pinned TCX link) while a1's pod sends
// a paced, sequence-numbered UDP stream to b1's pod, and counts at the
// receiver. The second restart starts, like a real agent, with an empty
// desired set that is filled (and prune allowed) only after the first pass.
func TestEBPFAgentRestartsLoseNoPackets(t *testing.T) {
	testutils.RequireRoot(t)
	m := newMesh(t, datapath.ModeEBPF, datapathtest.LabOptions{})
	for _, d := range m.desired {
		d.AllowPrune()
	}
	m.startAll()
	src, dst := m.pod(m.a1), m.pod(m.b1)
	const port = 7100

	rc, err := dst.ListenUDP(port)
	require.NoError(t, err)
	t.Cleanup(func() { rc.Close() })
	require.NoError(t, rc.SetReadBuffer(8<<20))
	var (
		mu       sync.Mutex
		seen     = map[uint64]bool{}
		received atomic.Int64
		dups     atomic.Int64
		wrongSrc atomic.Int64
	)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		buf := make([]byte, 64)
		for {
			n, from, err := rc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			if from.Addr() != src.IP {
				wrongSrc.Add(1)
			}
			seq := binary.BigEndian.Uint64(buf[:8])
			mu.Lock()
			if seen[seq] {
				dups.Add(1)
			}
			seen[seq] = true
			mu.Unlock()
			received.Add(1)
		}
	}()

	sc, err := src.Dial("udp", to(dst, port), dialTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { sc.Close() })
	var sent atomic.Uint64
	ctx, stopSending := context.WithCancel(context.Background())
	sendDone := make(chan error, 1)
	go func() {
		// One packet every 150 µs on average: the loop wakes at least every
		// 100 µs (timer permitting) and sends the packets that are due, at
		// most a few at once.
		const interval = 150 * time.Microsecond
		start := time.Now()
		buf := make([]byte, 64)
		for ctx.Err() == nil {
			due := uint64(time.Since(start) / interval)
			for n := 0; sent.Load() < due && n < 4; n++ {
				binary.BigEndian.PutUint64(buf, sent.Load())
				if _, err := sc.Write(buf); err != nil {
					sendDone <- err
					return
				}
				sent.Add(1)
			}
			tm := time.NewTimer(100 * time.Microsecond)
			<-tm.C
		}
		sendDone <- nil
	}()

	waitFor(t, convergeWithin, func() bool { return received.Load() > 1000 }, func() string { return "stream does not flow" })
	before := m.running[m.a1].r.Status().Traffic[2]

	for i := range 3 {
		sentAtStop := sent.Load()
		m.running[m.a1].stop(t)
		// Traffic keeps flowing while no reconciler runs at all.
		waitFor(t, convergeWithin, func() bool { return sent.Load() >= sentAtStop+20 }, func() string { return "sender stalled" })
		sentAtStart := sent.Load()
		full := m.desired[m.a1]
		if i == 1 {
			// Like a real agent: the new process starts with an empty
			// desired set that fills up as remotes sync, and prune is
			// allowed only after that. Nothing may be withdrawn meanwhile.
			m.desired[m.a1] = datapath.NewDesired()
		}
		rr := m.start(m.a1) // New: Load adopts the pins; Run: Attach swaps the program
		if i == 1 {
			waitFor(t, convergeWithin, func() bool { return !rr.r.Status().LastReconcile.IsZero() }, func() string { return "no first pass" })
			assert.Len(t, routesTo(t, m.a1, m.routed(m.b1)), 1, "an empty desired set before prune is allowed withdraws nothing")
			r0 := received.Load()
			waitFor(t, convergeWithin, func() bool { return received.Load() > r0+500 }, func() string { return "stream stopped while the desired set was empty" })
			m.desired[m.a1].SetCluster("b", clusterCIDRs("b"), slices.Collect(maps.Values(full.Snapshot().Entries)))
			m.desired[m.a1].AllowPrune()
		}
		m.waitApplied(m.a1)
		s := rr.r.Status()
		assert.Equal(t, map[string]int{"b": 2}, s.Programmed, "restart %d adopted the state", i+1)
		sentAfter := sent.Load()
		t.Logf("restart %d: %d packets sent while no reconciler ran, %d while the new one loaded, attached and converged", i+1, sentAtStart-sentAtStop, sentAfter-sentAtStart)
		r0 := received.Load()
		waitFor(t, convergeWithin, func() bool { return received.Load() > r0+2000 }, func() string { return "stream stopped after restart" })
	}

	stopSending()
	require.NoError(t, <-sendDone)
	total := sent.Load()
	// Wait for the tail of the stream; a shortfall is reported below as loss.
	assert.Eventually(t, func() bool { return uint64(received.Load()) >= total }, convergeWithin, 10*time.Millisecond)
	rc.Close()
	<-recvDone

	mu.Lock()
	lost := 0
	for s := range total {
		if !seen[s] {
			lost++
		}
	}
	mu.Unlock()
	t.Logf("sent %d packets, received %d, lost %d, duplicates %d", total, received.Load(), lost, dups.Load())
	assert.Zero(t, lost, "no packet lost across three restarts")
	assert.Zero(t, dups.Load())
	assert.Zero(t, wrongSrc.Load(), "every packet arrived from the sender's pod IP")
	assert.Greater(t, total, uint64(6000), "the stream ran through all three restarts")

	// The pinned counters survived the restarts and kept counting.
	after := m.running[m.a1].r.Status().Traffic[2]
	waitFor(t, convergeWithin, func() bool {
		after = m.running[m.a1].r.Status().Traffic[2]
		return after.Packets >= before.Packets+total/2
	}, func() string { return "tx counters did not keep counting across restarts" })
}
