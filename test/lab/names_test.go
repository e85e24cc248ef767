package lab

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNamesOwnOnlyTheirOwnLab(t *testing.T) {
	n := Names{Prefix: "podmesh-lab"}
	for _, name := range []string{
		n.Underlay(), n.ControlPlane(1), n.Node(3, 2), n.Node(12, 100),
	} {
		if !n.Owns(name) {
			t.Errorf("lab %s does not own its own %s", n.Prefix, name)
		}
	}
	for _, name := range []string{
		"podmesh-lab",               // the prefix alone
		"podmesh-labx-c1-n1",        // another prefix that starts with ours
		"podmesh-lab-c1-ul",         // a lab with prefix podmesh-lab-c1
		"podmesh-lab-c1-c2-n1",      // ditto
		"podmesh-lab-c1-n1-c2-cp",   // a lab with prefix podmesh-lab-c1-n1
		"podmesh-lab-c1-n1-p1-ul",   // a lab with prefix podmesh-lab-c1-n1-p1
		"podmesh-lab-x",             // not a role
		"podmesh-lab-c1-n1-p1",      // not a role (pods have no named namespace)
		"podmesh-lab-c-n1",          // not a role
		"other-podmesh-lab-c1-n1",   // does not start with the prefix
		"podmesh-lab-c1-n1\n",       // trailing junk
		"podmesh-lab-c1-n1/../../x", // path tricks
	} {
		if n.Owns(name) {
			t.Errorf("lab %s claims %q", n.Prefix, name)
		}
	}
}

func TestValidatePrefixRefusesUnsafeNames(t *testing.T) {
	for _, p := range []string{"podmesh-lab", "pmt1a2b3", "lab1"} {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "ab", "Podmesh", "-lab", "lab-", "lab--x", "lab/x", "lab.x", "1lab", "a-very-long-prefix-that-is-too-long"} {
		if err := ValidatePrefix(p); err == nil {
			t.Errorf("ValidatePrefix(%q) = nil, want an error", p)
		}
	}
}

func TestAddressingPlanKeepsClustersApart(t *testing.T) {
	for i := 1; i <= 3; i++ {
		for j := 1; j <= 3; j++ {
			if !ClusterPodCIDR(i).Contains(NodePodCIDR(i, j).Addr()) {
				t.Errorf("node %d/%d pod CIDR %s outside cluster %s", i, j, NodePodCIDR(i, j), ClusterPodCIDR(i))
			}
			pool := PodPoolCIDR(i, j)
			if !ClusterPodCIDR(i).Contains(pool.Addr()) {
				t.Errorf("node %d/%d pod pool %s outside cluster %s", i, j, pool, ClusterPodCIDR(i))
			}
			for k := 1; k <= MaxNodes; k++ {
				if pool.Overlaps(NodePodCIDR(i, k)) {
					t.Errorf("node %d/%d pod pool %s overlaps node %d's pod CIDR %s", i, j, pool, k, NodePodCIDR(i, k))
				}
			}
		}
		for o := 1; o <= 3; o++ {
			if o != i && ClusterPodCIDR(i).Overlaps(ClusterPodCIDR(o)) {
				t.Errorf("clusters %d and %d overlap", i, o)
			}
		}
	}
}

func TestWaitForStopsAtOnceOnPermanentError(t *testing.T) {
	calls := 0
	err := waitFor(context.Background(), time.Hour, time.Millisecond, "a dead process", func() (bool, error) {
		calls++
		if calls < 3 {
			return false, errors.New("not yet")
		}
		return false, permanent{errors.New("process exited")}
	})
	if err == nil || !strings.Contains(err.Error(), "process exited") {
		t.Fatalf("waitFor = %v, want the permanent error", err)
	}
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3", calls)
	}
}
