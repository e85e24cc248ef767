package bpf

// The generated podmesh_bpfel.{go,o} are committed, so building and testing
// need no clang. Regenerate with `make generate` (clang, llvm and libbpf-dev
// from Debian 12); check-generated.sh verifies the committed output is current.
// BPF2GO_OUTPUT_DIR is empty for normal use (bpf2go then writes here) and set
// by check-generated.sh to regenerate into a scratch directory.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -output-dir "$BPF2GO_OUTPUT_DIR" -target bpfel -type ipcache_key -type ipcache_value -type config -type counter -type podmesh_drop_reason podmesh podmesh.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
