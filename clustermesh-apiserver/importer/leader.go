package importer

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/podmesh/podmesh/pkg/kvstore"
)

// runElected competes for the Lease until ctx is done; while it holds it,
// it writes. Losing the Lease stops the writer at once (its context ends)
// and the instance competes again.
func (imp *Importer) runElected(ctx context.Context) error {
	le := imp.opts.LeaderElection
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: le.Namespace, Name: le.Name},
		Client:     imp.opts.Kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: le.Identity},
	}
	dur := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   dur(le.LeaseDuration, 15*time.Second),
			RenewDeadline:   dur(le.RenewDeadline, 10*time.Second),
			RetryPeriod:     dur(le.RetryPeriod, 2*time.Second),
			ReleaseOnCancel: true,
			Name:            le.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					imp.log.WithField("identity", le.Identity).Info("Holding the importer Lease; writing imports")
					imp.setLeader(true)
					for lctx.Err() == nil {
						if err := imp.write(lctx); err != nil && lctx.Err() == nil {
							imp.log.WithError(err).Error("Import writer stopped; restarting it")
							_ = kvstore.Sleep(lctx, time.Second)
						}
					}
				},
				OnStoppedLeading: func() {
					imp.setLeader(false)
					imp.log.WithField("identity", le.Identity).Info("Not holding the importer Lease; not writing")
				},
			},
		})
		if err != nil {
			return err
		}
		elector.Run(ctx)
	}
	return ctx.Err()
}
