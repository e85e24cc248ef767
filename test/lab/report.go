package lab

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteMatrix prints the connectivity matrix for a newcomer: one line per
// probe (who connected to whom, what source address the receiver saw, how
// long connect plus first reply took), then a per-cluster summary grid.
func WriteMatrix(w io.Writer, cells []MatrixCell) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tSRC IP\t\tTO\tDST IP\tRESULT\tRECEIVER SAW\tCONNECT+REPLY")
	for _, c := range cells {
		res, seen := "ok", c.Seen.String()
		switch {
		case c.Err != nil:
			res, seen = "FAIL", shortErr(c.Err)
		case !c.OK():
			res = "WRONG SOURCE"
		}
		fmt.Fprintf(tw, "%s\t%s\t->\t%s\t%s\t%s\t%s\t%s\n", c.From, c.From.IP, c.To, c.To.IP, res, seen, c.RTT.Round(10*time.Microsecond))
	}
	tw.Flush()

	// Summary: per (source cluster, destination cluster) ok/total.
	type key struct{ from, to string }
	ok, total := map[key]int{}, map[key]int{}
	clusters := map[string]bool{}
	for _, c := range cells {
		k := key{c.From.Cluster, c.To.Cluster}
		total[k]++
		if c.OK() {
			ok[k]++
		}
		clusters[c.From.Cluster], clusters[c.To.Cluster] = true, true
	}
	names := make([]string, 0, len(clusters))
	for n := range clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "from \\ to\t%s\n", strings.Join(names, "\t"))
	good := 0
	for _, f := range names {
		row := []string{f}
		for _, t := range names {
			k := key{f, t}
			if f == t {
				row = append(row, "-")
				continue
			}
			row = append(row, fmt.Sprintf("%d/%d", ok[k], total[k]))
			good += ok[k]
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d of %d cross-cluster connections ok, each receiver saw the sender's own pod IP (no NAT)\n", good, len(cells))
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 60 {
		s = s[i+2:]
	}
	return s
}
