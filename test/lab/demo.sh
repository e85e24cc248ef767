#!/usr/bin/env bash
# podmesh demo: three real Kubernetes clusters of two nodes each on this
# machine (etcd, kube-apiserver, kube-controller-manager, kube-scheduler per
# cluster; containerd, kube-proxy and a kubelet per node, each node in its
# own network namespace), podmesh installed on each from daemonset/ with
# kubectl as a user does, two echo pods per node as a Deployment. Shows that
# every pod reaches every pod of the other clusters directly (the receiver
# sees the sender's own pod IP), shows one agent's view, and tears
# everything down again.
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
missing=
for p in iproute2 util-linux containerd runc containernetworking-plugins iptables; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "    apt-get install$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
echo "    make tools   (etcd and Kubernetes v1.36.3 binaries; several minutes the first time)"
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

step "bringing up 3 real clusters x 2 nodes, podmesh from daemonset/, 2 echo pods per node ($mode mode)"
"${lab[@]}" up "${p[@]}" --clusters 3 --nodes 2 --pods 2 --mode "$mode" --bin-dir "$bin"

step "the lab: clusters, nodes, pods and what every agent reports"
"${lab[@]}" status "${p[@]}"

step "connectivity matrix: every pod -> every pod in the other clusters (TCP; the receiver reports the source IP it saw)"
"${lab[@]}" matrix "${p[@]}"

step "podmesh-agent status in an agent pod of cluster c1 (kubectl exec ds/podmesh-agent -- podmesh-agent status)"
"${lab[@]}" exec "${p[@]}" c1/podmesh-system/ds/podmesh-agent -- podmesh-agent status

step "what the agent programmed in c1-n1's kernel (routes tagged with podmesh's protocol 150)"
"${lab[@]}" exec "${p[@]}" c1-n1 -- ip route show proto 150

if [ "$keep" = 1 ]; then
  cat <<EOF

[$(elapsed)] the lab is still running (KEEP=1). Explore it:
  $bin/podmesh-lab status ${p[*]}
  $bin/podmesh-lab matrix ${p[*]}
  $bin/podmesh-lab exec ${p[*]} c1/podmesh-system/ds/podmesh-agent -- podmesh-agent status
  $bin/podmesh-lab exec ${p[*]} c1-n1 -- ip route show proto 150
  $bin/podmesh-lab exec ${p[*]} c1-n1 -- ip route get 10.2.1.2
  ls /run/podmesh-lab/$prefix/logs/          (every kubelet's, containerd's and kube-proxy's log)
and remove it with:
  $bin/podmesh-lab down ${p[*]}
EOF
fi
