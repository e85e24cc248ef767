package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podmesh/podmesh/pkg/agentstatus"
)

// statusCommand implements `podmesh-agent status`.
func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podmesh-agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("status-listen", defaultStatusListen, "status address of the running agent")
	asJSON := fs.Bool("json", false, "print the raw JSON report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkListen(*listen); err != nil {
		return fmt.Errorf("--status-listen: %w", err)
	}
	rep, raw, err := fetchReport(ctx, *listen)
	if err != nil {
		return err
	}
	if *asJSON {
		_, err := stdout.Write(raw)
		return err
	}
	return printReport(stdout, rep, time.Now())
}

func fetchReport(ctx context.Context, listen string) (*Report, []byte, error) {
	host := listen
	if strings.HasPrefix(host, ":") || strings.HasPrefix(host, "0.0.0.0:") || strings.HasPrefix(host, "[::]:") {
		host = "127.0.0.1:" + host[strings.LastIndex(host, ":")+1:]
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/status", nil)
	if err != nil {
		return nil, nil, fmt.Errorf("query agent status: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("query agent status at %s: %w", host, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read agent status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("agent status at %s: %s", host, resp.Status)
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return nil, nil, fmt.Errorf("decode agent status: %w", err)
	}
	return &rep, raw, nil
}

// printReport renders the report as a table, one row per remote cluster.
// PREFIXES is what the datapath reports as programmed, or the desired count
// (marked "desired") when the datapath does not report.
func printReport(w io.Writer, rep *Report, now time.Time) error {
	st := rep.Mesh
	sync := "initial sync pending"
	if st.Synced {
		sync = "synced (" + st.SyncReason + ")"
	}
	fmt.Fprintf(w, "cluster %s (id %d), node %s (%s), %s\n", st.LocalCluster, st.LocalClusterID, rep.Node, rep.TunnelIP, sync)
	if st.ConfigDirError != "" {
		fmt.Fprintf(w, "config directory %s: %s\n", st.ConfigDir, st.ConfigDirError)
	}
	if d := rep.Datapath; d != nil {
		line := fmt.Sprintf("datapath %s, %d reconcile errors", d.Mode, d.ReconcileErrors)
		if d.LastError != "" {
			line += ", last error: " + d.LastError
		}
		fmt.Fprintln(w, line)
	}
	if c := st.Cache; c != nil {
		fmt.Fprintln(w, cacheLine(c, now))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tREADY\tSINCE\tNODES\tENDPOINTS\tPREFIXES\tINVALID\tLAST ERROR")
	for _, r := range st.Remotes {
		ready := "yes"
		if !r.Ready {
			ready = "no: " + r.Reason
		}
		prefixes := strconv.Itoa(r.Prefixes) + " desired"
		if rep.Datapath != nil {
			prefixes = fmt.Sprintf("%d/%d", rep.Datapath.Programmed[r.Cluster], r.Prefixes)
		}
		lastErr := "-"
		if r.LastError != "" {
			lastErr = fmt.Sprintf("%s (%s ago)", r.LastError, age(now, r.LastErrorTime))
		}
		id := "-"
		if r.ClusterID != 0 {
			id = strconv.Itoa(int(r.ClusterID))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\t%d\t%d\t%s\t%d\t%s\n", r.Cluster, id, ready, age(now, r.Since), r.Nodes, r.Endpoints, prefixes, r.InvalidEntries, lastErr)
	}
	if len(st.Remotes) == 0 {
		fmt.Fprintln(tw, "(no remote clusters configured)")
	}
	return tw.Flush()
}

// cacheLine says which cache replica the agent reads (its epoch; the
// replicas share the Service address) and how often it listed it.
func cacheLine(c *agentstatus.Cache, now time.Time) string {
	addr := c.Endpoint
	if c.Address != "" {
		addr += " (" + c.Address + ")"
	}
	epoch := c.Epoch
	if epoch == "" {
		epoch = "none listed yet"
	}
	state := "connected"
	if !c.Connected {
		state = "not connected"
		if !c.RetryAt.IsZero() && c.RetryAt.After(now) {
			state += ", retry in " + c.RetryAt.Sub(now).Round(100*time.Millisecond).String()
		}
	}
	line := fmt.Sprintf("cache %s, replica epoch %s, %s, %d listings", addr, epoch, state, c.Listings)
	if !c.LastListed.IsZero() {
		line += ", last " + age(now, c.LastListed) + " ago"
	}
	return line
}

func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}
