package soak

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/lab"
)

// A stub DNS server in a namespace of the test's own answers one query after
// a delay: queryA tells an answer that comes late (and returns it, with its
// delay) from one that does not come within the wait.
func TestQueryATellsALateAnswerFromNone(t *testing.T) {
	testutils.RequireRoot(t)
	ns := testutils.NewNetNS(t, "soakdns")
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	pc, err := lab.ListenPacketIn(ns.Path(), "udp", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const delay = 1500 * time.Millisecond
	want := []netip.Addr{netip.MustParseAddr("10.1.1.2"), netip.MustParseAddr("10.2.1.2")}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
				continue
			}
			m.Response = true
			for _, a := range []netip.Addr{want[1], want[0]} {
				m.Answers = append(m.Answers, dnsmessage.Resource{
					Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET},
					Body:   &dnsmessage.AResource{A: a.As4()},
				})
			}
			out, _ := m.Pack()
			go func() {
				time.Sleep(delay) // the stub server's slowness under test, not synchronisation
				_, _ = pc.WriteTo(out, from)
			}()
		}
	}()
	ctx := context.Background()
	got, took, err := queryA(ctx, ns.Path(), netip.MustParseAddr("127.0.0.1"), ExportedName, 5*time.Second)
	if err != nil || !slices.Equal(got, want) || took < delay {
		t.Fatalf("late answer: %v after %s (%v), want %v after at least %s", got, took, err, want, delay)
	}
	got, took, err = queryA(ctx, ns.Path(), netip.MustParseAddr("127.0.0.1"), ExportedName, delay/2)
	if err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("answer later than the wait: %v after %s (%v), want no answer", got, took, err)
	}
}
