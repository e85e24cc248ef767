#!/usr/bin/env bash
# Builds the lab's and the tests' Kubernetes binaries into a bin directory
# (default: bin/ at the repository root) from the Go module proxy, all static
# (CGO_ENABLED=0, -trimpath):
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl (k8s.io/kubernetes, this module), etcd (this module) and coredns
#   (the coredns/ module, whose k8s.io library versions differ).
# A stamp file records, per binary, the module version it was built from; a
# binary is rebuilt only when that version changes or the binary is missing.
# Each build prints its name and, when done, its wall-clock time.
#
#   build.sh [bin dir] [binary...]   # no binary named: all of them
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../bin}
shift || true
only=" $* "
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
stamp="$bin/.tools-stamp"
# Bump when the flags below change, so every binary is rebuilt once.
flags=static-v3

modversion() { # module go.mod -> version
  awk -v m="$1" '$1 == m { print $2; exit }' "$2"
}
kube=$(modversion k8s.io/kubernetes "$here/go.mod")
etcd=$(modversion go.etcd.io/etcd/server/v3 "$here/go.mod")
coredns=$(modversion github.com/coredns/coredns "$here/coredns/go.mod")
major=$(echo "$kube" | sed -E 's/^v([0-9]+)\..*/\1/')
minor=$(echo "$kube" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
v=k8s.io/component-base/version
kubeldflags="-X $v.gitVersion=$kube -X $v.gitMajor=$major -X $v.gitMinor=$minor -X $v.gitTreeState=clean"

# name | module dir | package | version | ldflags
targets=(
  "kube-apiserver|$here|k8s.io/kubernetes/cmd/kube-apiserver|$kube|$kubeldflags"
  "etcd|$here|go.etcd.io/etcd/server/v3|$etcd|"
  "kube-controller-manager|$here|k8s.io/kubernetes/cmd/kube-controller-manager|$kube|$kubeldflags"
  "kube-scheduler|$here|k8s.io/kubernetes/cmd/kube-scheduler|$kube|$kubeldflags"
  "kubelet|$here|k8s.io/kubernetes/cmd/kubelet|$kube|$kubeldflags"
  "kube-proxy|$here|k8s.io/kubernetes/cmd/kube-proxy|$kube|$kubeldflags"
  "kubectl|$here|k8s.io/kubernetes/cmd/kubectl|$kube|$kubeldflags"
  "coredns|$here/coredns|github.com/coredns/coredns|$coredns|"
)

stamped() { # name key -> true if the stamp records key for name
  grep -qxF "$1 $2" "$stamp" 2>/dev/null
}
record() { # name key: replace name's line in the stamp
  { grep -v "^$1 " "$stamp" 2>/dev/null || true; echo "$1 $2"; } > "$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
}

todo=()
for t in "${targets[@]}"; do
  IFS='|' read -r name dir pkg version ldflags <<< "$t"
  if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then
    continue
  fi
  if [ -x "$bin/$name" ] && stamped "$name" "$version-$flags"; then
    continue
  fi
  todo+=("$t")
done
[ ${#todo[@]} -eq 0 ] && exit 0

echo "building ${#todo[@]} test tool(s) into $bin; cold, on 2 cores, kubelet and kube-controller-manager take several minutes each" >&2
for t in "${todo[@]}"; do
  IFS='|' read -r name dir pkg version ldflags <<< "$t"
  echo "  $name $version ..." >&2
  start=$(date +%s)
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  record "$name" "$version-$flags"
  echo "  $name done in $(( $(date +%s) - start ))s" >&2
done
