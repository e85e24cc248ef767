package clustermesh_test

import (
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// serviceRecorder is a ServiceSink that keeps each remote's last services
// (nil after a withdrawal) and counts the hand-overs.
type serviceRecorder struct {
	mu       sync.Mutex
	services map[string]map[string][]byte
	sets     map[string]int
}

func newServiceRecorder() *serviceRecorder {
	return &serviceRecorder{services: map[string]map[string][]byte{}, sets: map[string]int{}}
}

func (r *serviceRecorder) SetClusterServices(cc *meshapi.ClusterConfig, services map[string][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.services[cc.Name] = services
	r.sets[cc.Name]++
}

func (r *serviceRecorder) RemoveClusterServices(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.services[cluster] = nil
}

// of returns a copy of cluster's services as last handed over, whether any
// were, and how many SetClusterServices calls there were.
func (r *serviceRecorder) of(cluster string) (map[string]string, bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.services[cluster]
	if !ok || m == nil {
		return nil, ok, r.sets[cluster]
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out, true, r.sets[cluster]
}

// TestSessionsHandServicesToTheSink: with Options.Services, a session lists
// the remote's exported services and hands them over raw (an entry the
// importer would refuse included: validating is the sink's business),
// again after each change and not on node churn; a remote without the
// serviceExports capability is handed over empty; a removed file withdraws.
func TestSessionsHandServicesToTheSink(t *testing.T) {
	west := cmt.StartRemote(t, "west", 2, "10.2.0.0/16")
	west.Config.Capabilities.ServiceExports = true
	west.PutJSON(t, meshapi.ClusterConfigKey("west"), west.Config)
	west.PutNode(t, "w1", "192.168.2.1", "10.2.1.0/24")
	west.Put(t, meshapi.ServiceKey("west", "shop", "web"), `{"raw":"as published"}`)
	north := cmt.StartRemote(t, "north", 4, "10.4.0.0/16") // no serviceExports
	north.PutNode(t, "n1", "192.168.4.1", "10.4.1.0/24")
	north.Put(t, meshapi.ServiceKey("north", "shop", "web"), `{}`)
	dir := cmt.NewConfigDir(t)
	dir.Add(t, west)
	dir.Add(t, north)
	sink := newServiceRecorder()
	m := startMesh(t, dir, func(o *clustermesh.Options) { o.Services = sink })

	m.waitReady(t, "west")
	m.waitReady(t, "north")
	got, ok, _ := sink.of("west")
	require.True(t, ok)
	assert.Equal(t, map[string]string{meshapi.ServiceKey("west", "shop", "web"): `{"raw":"as published"}`}, got)
	got, ok, _ = sink.of("north")
	assert.True(t, ok, "a remote without exports is handed over")
	assert.Empty(t, got, "a remote without the serviceExports capability is not listed")

	west.Put(t, meshapi.ServiceKey("west", "shop", "api"), `{"second":true}`)
	eventually(t, 20*time.Second, "west's second service", func() bool { got, _, _ := sink.of("west"); return len(got) == 2 })
	_, _, sets := sink.of("west")
	west.PutNode(t, "w2", "192.168.2.2", "10.2.2.0/24")
	eventually(t, 20*time.Second, "west's second node", func() bool { return len(m.rec.Cluster("west")) == 2 })
	_, _, after := sink.of("west")
	assert.Equal(t, sets, after, "node churn hands no services over")
	west.Delete(t, meshapi.ServiceKey("west", "shop", "web"))
	eventually(t, 20*time.Second, "west's web gone", func() bool {
		got, _, _ := sink.of("west")
		return maps.Equal(got, map[string]string{meshapi.ServiceKey("west", "shop", "api"): `{"second":true}`})
	})

	dir.Remove(t, "west")
	eventually(t, 20*time.Second, "west withdrawn", func() bool { got, ok, _ := sink.of("west"); return ok && got == nil })
}
