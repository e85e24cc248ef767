#!/usr/bin/env bash
# Builds the test-only kube-apiserver and etcd into bin/ from the Go module
# proxy. A stamp file records the versions; binaries are rebuilt only when the
# versions in this module's go.mod change or a binary is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../bin}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
cd "$here"
want=$(grep -E '^\s*(k8s.io/kubernetes|go.etcd.io/etcd/server/v3) ' go.mod | awk '{print $1"@"$2}' | sort | tr '\n' ' ')
kube=$(grep -E '^\s*k8s.io/kubernetes ' go.mod | awk '{print $2}')
major=$(echo "$kube" | sed -E 's/^v([0-9]+)\..*/\1/')
minor=$(echo "$kube" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
want="$want ldflags-v2"
stamp="$bin/.tools-stamp"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "building test tools ($want) into $bin — about 4 minutes the first time" >&2
v=k8s.io/component-base/version
go build -trimpath -ldflags "-X $v.gitVersion=$kube -X $v.gitMajor=$major -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
  -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -trimpath -o "$bin/etcd" go.etcd.io/etcd/server/v3
echo "$want" > "$stamp"
