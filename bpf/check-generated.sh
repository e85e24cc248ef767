#!/usr/bin/env bash
# check-generated.sh: fail when the committed bpf2go output (podmesh_bpfel.go,
# podmesh_bpfel.o) does not match what `go generate` builds from podmesh.c now.
# It regenerates into a scratch directory (BPF2GO_OUTPUT_DIR, see gen.go) and
# compares byte for byte; the working tree is never modified.
#
# Needs clang, llvm-strip and the libbpf headers (Debian 12: apt-get install
# clang llvm libbpf-dev). Without them it prints SKIP and exits 0, so it can
# sit in `make lint` on machines without a BPF toolchain. The committed
# objects are built with Debian 12's clang 14; another clang version may
# produce different bytes, which this check reports as stale.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v llvm-strip >/dev/null 2>&1 || missing+=(llvm-strip)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev headers)
if [ ${#missing[@]} -gt 0 ]; then
	echo "check-generated: SKIP: ${missing[*]} not installed; committed bpf2go output NOT checked" >&2
	echo "check-generated: install with: apt-get install clang llvm libbpf-dev" >&2
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
BPF2GO_OUTPUT_DIR="$tmp" go generate ./

stale=0
for f in podmesh_bpfel.go podmesh_bpfel.o; do
	if ! cmp -s "$f" "$tmp/$f"; then
		echo "check-generated: bpf/$f is stale" >&2
		stale=1
	fi
done
if [ "$stale" -ne 0 ]; then
	diff -u podmesh_bpfel.go "$tmp/podmesh_bpfel.go" >&2 || true
	echo "check-generated: regenerate with 'make generate' and commit the result ($(clang --version | head -n1))" >&2
	exit 1
fi
echo "check-generated: bpf2go output is current"
