package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// State is what a lab records in <state dir>/state.json, so that `down` (or
// the next test run) can find and remove it after a crash.
type State struct {
	Prefix string `json:"prefix"`
	// OwnerPID and OwnerStart identify the process that owns the lab (the
	// CLI supervisor or a test binary); the start time guards against pid
	// reuse.
	OwnerPID   int       `json:"ownerPID"`
	OwnerStart uint64    `json:"ownerStart"`
	Created    time.Time `json:"created"`
	// BPFMount is a bpffs the lab mounted itself (when /sys/fs/bpf is not a
	// bpffs), to be unmounted on down.
	BPFMount string `json:"bpfMount,omitempty"`
	// Ready is set once `up` has finished.
	Ready bool `json:"ready"`
	// Layout is the lab's shape, for status.
	Layout *Layout `json:"layout,omitempty"`
}

// Layout is the recorded shape of a lab: what `status` shows.
type Layout struct {
	RoutingMode string `json:"routingMode"`
	// BinDir holds the binaries the lab runs (kubectl).
	BinDir   string          `json:"binDir,omitempty"`
	Clusters []ClusterLayout `json:"clusters"`
}

// ClusterLayout records one cluster.
type ClusterLayout struct {
	Name          string       `json:"name"`
	ID            uint32       `json:"id"`
	PodCIDRs      []string     `json:"podCIDRs"`
	NetNS         string       `json:"netns"`
	APIServer     string       `json:"apiServer"`
	Kubeconfig    string       `json:"kubeconfig"`
	MeshEndpoints []string     `json:"meshEndpoints"`
	Nodes         []NodeLayout `json:"nodes"`
}

// NodeLayout records one node.
type NodeLayout struct {
	Name         string `json:"name"`
	NetNS        string `json:"netns"`
	IP           string `json:"ip"`
	PodCIDR      string `json:"podCIDR"`
	StatusListen string `json:"statusListen"`
	BPFRoot      string `json:"bpfRoot"`
	KubeletLog   string `json:"kubeletLog"`
}

const stateFile = "state.json"

func writeState(dir string, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// ReadState reads the state a lab recorded in dir.
func ReadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode lab state %s: %w", dir, err)
	}
	return &s, nil
}

// OwnerAlive reports whether the process that owns the lab still runs.
func (s *State) OwnerAlive() bool {
	if s.OwnerPID <= 0 {
		return false
	}
	start, err := procStartTime(s.OwnerPID)
	return err == nil && start == s.OwnerStart
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in ticks).
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; fields follow the
	// last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}
