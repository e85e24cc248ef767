#!/usr/bin/env bash
# podmesh demo: three Kubernetes clusters, two nodes each, two pods per node,
# all as network namespaces on this machine; every cluster runs a real
# kube-apiserver and clustermesh-apiserver, every node the real podmesh-agent
# in eBPF mode. Shows that every pod reaches every pod of the other clusters
# directly (the receiver sees the sender's own pod IP), shows one agent's
# view, and tears everything down again.
#
#   make demo            run it (root: it creates network namespaces)
#   KEEP=1 make demo     leave the lab running and print how to explore it
#   MODE=vxlan make demo use another routing mode (ebpf, vxlan, native)
#
# Nothing touches the host's network: all links live inside the lab's own
# namespaces, and `podmesh-lab down` removes everything (also after Ctrl-C).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="$root/bin"
prefix=${PREFIX:-podmesh-demo}
mode=${MODE:-ebpf}
keep=${KEEP:-0}
start=$(date +%s.%N)

elapsed() { awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN{printf "%5.1fs", n-s}'; }
step() { printf '\n[%s] ==> %s\n' "$(elapsed)" "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "make demo needs root: it creates network namespaces (try: sudo make demo)" >&2
  exit 1
fi
cd "$root"

step "installing what the demo needs (cached after the first run)"
if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then
  echo "    apt-get install iproute2 util-linux"
  apt-get update -qq && apt-get install -y -qq iproute2 util-linux >/dev/null
fi
echo "    make tools   (test-only kube-apiserver and etcd; about 4 minutes the first time)"
make --no-print-directory tools
echo "    make build   (podmesh-agent, clustermesh-apiserver, podmesh-certs, podmesh-lab)"
make --no-print-directory build >/dev/null
for b in podmesh-agent clustermesh-apiserver podmesh-lab; do
  [ -x "$bin/$b" ] || { echo "make build did not produce $bin/$b" >&2; exit 1; }
done
lab=("$bin/podmesh-lab")
p=(--prefix "$prefix")

cleanup() {
  rc=$?
  if [ "$keep" = 1 ] && [ "$rc" = 0 ]; then
    return
  fi
  step "tearing the lab down"
  "${lab[@]}" down "${p[@]}" || true
  printf '\n[%s] demo finished (exit %s)\n' "$(elapsed)" "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous demo left running with KEEP=1 goes first.
"${lab[@]}" down "${p[@]}" >/dev/null

step "bringing up 3 clusters x 2 nodes x 2 pods ($mode mode)"
"${lab[@]}" up "${p[@]}" --clusters 3 --nodes 2 --pods 2 --mode "$mode" --bin-dir "$bin"

step "the lab: clusters, nodes, pods and what every agent reports"
"${lab[@]}" status "${p[@]}"

step "connectivity matrix: every pod -> every pod in the other clusters (TCP; the receiver reports the source IP it saw)"
"${lab[@]}" matrix "${p[@]}"

step "podmesh-agent status on node c1-n1 (run inside the node: podmesh-agent status)"
"${lab[@]}" exec "${p[@]}" c1-n1 -- "$bin/podmesh-agent" status

step "what the agent programmed in c1-n1's kernel (routes tagged with podmesh's protocol 150)"
"${lab[@]}" exec "${p[@]}" c1-n1 -- ip route show proto 150

if [ "$keep" = 1 ]; then
  cat <<EOF

[$(elapsed)] the lab is still running (KEEP=1). Explore it:
  $bin/podmesh-lab status ${p[*]}
  $bin/podmesh-lab matrix ${p[*]}
  $bin/podmesh-lab exec ${p[*]} c1-n1 -- $bin/podmesh-agent status
  $bin/podmesh-lab exec ${p[*]} c1-n1 -- ip route show proto 150
  $bin/podmesh-lab exec ${p[*]} c1-n1 -- ip route get 10.2.1.11
  $bin/podmesh-lab probe ${p[*]} c1-n1-p1 10.3.2.12
  ls /run/podmesh-lab/$prefix/logs/          (every agent's and apiserver's log)
and remove it with:
  $bin/podmesh-lab down ${p[*]}
EOF
fi
