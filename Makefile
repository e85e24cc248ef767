# podmesh — every target carries a "## description"; `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
TEST_TIMEOUT ?= 25m

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Debian packages: iproute2 and util-linux (nsenter) for the namespaces, the
# BPF toolchain so the committed bpf2go output can be checked for staleness,
# and containerd, runc, the CNI plugins and iptables for the lab's real nodes.
DEB_PKGS := iproute2 util-linux clang llvm libbpf-dev containerd runc containernetworking-plugins iptables

.PHONY: deps
deps: ## install the Debian packages the tests and the demo need
	@missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

.PHONY: tools
tools: ## build the lab's Kubernetes v1.36 binaries, etcd and CoreDNS into bin/ (static, cached)
	@test/tools/build.sh $(BIN)

IMAGE_TAG ?= dev
FROM ?= v0.1.0
DURATION ?= 30m

.PHONY: images
images: ## build the container images (podmesh-agent, clustermesh-apiserver, podmesh-certs; the lab's pause, echo, coredns) as docker-archives into bin/images/ (IMAGE_TAG=dev)
	@test/tools/build.sh $(BIN) coredns
	@$(GO) run ./images/cmd/podmesh-images --out $(BIN)/images --bin $(BIN) --tag $(IMAGE_TAG)

.PHONY: build
build: ## build podmesh-agent, clustermesh-apiserver, podmesh-certs and podmesh-lab into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/podmesh-agent ./agent
	$(GO) build -o $(BIN)/clustermesh-apiserver ./clustermesh-apiserver
	$(GO) build -o $(BIN)/podmesh-certs ./certs/cmd/podmesh-certs
	$(GO) build -o $(BIN)/podmesh-lab ./test/lab/cmd/podmesh-lab

.PHONY: test
test: deps tools ## run unit, integration, privileged datapath and end-to-end tests (tiers 1-4)
	$(GO) vet ./...
	bpf/check-generated.sh
	@# test/lab first: go test starts packages in the order given, and the real
	@# lab is the longest; the other packages run beside it.
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/lab/ $$($(GO) list ./... | grep -v -e '/test/chaos/soak$$' -e '/test/lab$$')
	@# The short chaos soak brings up its own real lab: after test/lab's, never next to it.
	$(GO) test -count=1 -timeout 20m ./test/chaos/soak/

.PHONY: test-upgrade
test-upgrade: deps tools ## upgrade FROM (default v0.1.0) to this checkout and back on 2 real clusters under traffic: 0 lost (test/upgrade)
	PODMESH_UPGRADE=1 PODMESH_UPGRADE_FROM=$(FROM) $(GO) test -count=1 -v -timeout 30m ./test/upgrade/

.PHONY: chaos
chaos: deps tools ## chaos soak on 3 real clusters x 2 nodes under traffic (DURATION=30m, SEED=n to replay a run)
	$(GO) run ./test/chaos -duration $(DURATION) $(if $(SEED),-seed $(SEED))

.PHONY: demo
demo: deps ## bring up 3 real clusters x 2 kubelet nodes, podmesh from daemonset/, 2 echo pods per node; show the connectivity matrix and a node's status, tear down (KEEP=1 keeps it, MODE=vxlan|native)
	test/lab/demo.sh

.PHONY: test-unit
test-unit: ## run the unit tests only (no root, no network, no tools)
	$(GO) test -short -count=1 ./...

.PHONY: generate
generate: deps ## regenerate the committed bpf2go output (clang, llvm, libbpf-dev from Debian)
	cd bpf && BPF2GO_OUTPUT_DIR=. $(GO) generate ./

.PHONY: lint
lint: ## gofmt, go vet and the bpf2go staleness check
	bpf/check-generated.sh
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: fuzz
fuzz: ## fuzz every decoder and validator of remote data and the config-directory parser (FUZZTIME=1m per target)
	@for pkg in ./pkg/meshapi ./pkg/kvstore ./clustermesh-apiserver/importer; do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep ^Fuzz); do \
	    echo "== $$pkg $$t"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $${FUZZTIME:-1m} -parallel 1 $$pkg || exit 1; done; done

.PHONY: bench
bench: tools ## run the go benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./...
