package soak

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/podmesh/podmesh/clustermesh-apiserver/importer"
	"github.com/podmesh/podmesh/test/lab"
)

// sliceJournal writes one line per change of an imported EndpointSlice of
// the exported service in any cluster (when it was seen, the cluster, add,
// update or delete, the slice's source cluster and its ready addresses).
// A lookup that answered wrong is then placed against what the importer
// wrote at that moment: a slice withdrawn or emptied by the importer, or
// slices that were whole while CoreDNS answered otherwise.
type sliceJournal struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu protects out.
	mu  sync.Mutex
	out io.Writer
}

func startSliceJournal(ctx context.Context, l *lab.Lab, out io.Writer) (*sliceJournal, error) {
	ctx, cancel := context.WithCancel(ctx)
	j := &sliceJournal{cancel: cancel, out: out}
	selector := importer.LabelMCSServiceName + "=" + lab.EchoApp
	for _, c := range l.Clusters() {
		f := informers.NewSharedInformerFactoryWithOptions(c.Kube.Client, 0, informers.WithNamespace(metav1.NamespaceDefault),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
		inf := f.Discovery().V1().EndpointSlices().Informer()
		name := c.Name
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { j.record(name, "add", obj) },
			UpdateFunc: func(old, obj any) {
				if old.(*discoveryv1.EndpointSlice).ResourceVersion != obj.(*discoveryv1.EndpointSlice).ResourceVersion {
					j.record(name, "update", obj)
				}
			},
			DeleteFunc: func(obj any) { j.record(name, "delete", obj) },
		}); err != nil {
			cancel()
			return nil, fmt.Errorf("cluster %s: watch imported EndpointSlices: %w", c.Name, err)
		}
		j.wg.Go(func() { inf.Run(ctx.Done()) })
	}
	return j, nil
}

func (j *sliceJournal) record(cluster, what string, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	var ready []string
	for _, e := range s.Endpoints {
		if e.Conditions.Ready == nil || *e.Conditions.Ready {
			ready = append(ready, e.Addresses...)
		}
	}
	sort.Strings(ready)
	j.mu.Lock()
	defer j.mu.Unlock()
	fmt.Fprintf(j.out, "%s %s %s slice %s from %s ready [%s]\n", time.Now().Format("15:04:05.000"), cluster, what, s.Name,
		s.Labels[importer.LabelSourceCluster], strings.Join(ready, " "))
}

func (j *sliceJournal) stop() {
	j.cancel()
	j.wg.Wait()
}
