// Package benchapiserver holds the clustermesh-apiserver benchmarks that need
// a real kube-apiserver (test/kubetest) and, for memory, the real binary:
//
//		go test -run '^$' -bench . -benchtime 1x -timeout 30m ./test/bench-apiserver/
//
//	  - BenchmarkSync10kPods: Kubernetes → etcd sync rate for 10,000 pods, live
//	    (pods created while the apiserver runs; time until the last endpoint
//	    key is in etcd) and at start-up (10,000 pods already in Kubernetes; time
//	    from start until every canary is written).
//	  - BenchmarkProxy1000Watchers: resident memory of the clustermesh-apiserver
//	    process with 1,000 remote watchers (one mTLS connection each) on the
//	    same prefix, and how many watches the embedded etcd sees.
//
// Each runs once per invocation (-benchtime 1x) and reports its numbers with
// b.ReportMetric; nothing here asserts a speed.
package benchapiserver
