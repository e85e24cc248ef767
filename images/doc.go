// Package images builds podmesh's container images without a container
// engine, with github.com/google/go-containerregistry: each image is
// empty.Image plus one layer holding one static binary (CGO_ENABLED=0), so
// there is no base image to pull, no shell, no package manager, no
// /etc/passwd and no CA bundle (nothing in the binaries needs one: every TLS
// peer is verified against a CA podmesh is given).
//
// The images are the ones a user pushes: podmesh.local/podmesh-agent:<tag>
// and podmesh.local/clustermesh-apiserver:<tag> (and the podmesh-certs
// tool), plus the images only the lab runs: its pod sandbox
// (podmesh.local/pause:1, test/pause), its application server
// (podmesh.local/echo:1, test/echo/cmd/echo) and CoreDNS
// (podmesh.local/coredns:<version>, built by test/tools/build.sh). Each one is
// written as a docker-archive tar, which `ctr -n k8s.io images import`
// and `docker load` accept.
//
// Design decisions:
//   - Users come from the manifests (daemonset/base): the agent is 0:0 — it
//     needs the NET_ADMIN, BPF and PERFMON capabilities the DaemonSet adds,
//     and only uid 0 keeps added capabilities across exec without ambient
//     ones; the clustermesh-apiserver is 65532:65532, the runAsUser of its
//     Deployment. Users are numeric, so runAsNonRoot can be checked without
//     an /etc/passwd.
//   - Content is reproducible: every timestamp is the Unix epoch, owners are
//     0:0, the binaries are built with -trimpath, and gzip output is
//     deterministic, so unchanged binaries give the same image digest.
//   - Build rewrites an archive only when what goes into it changed (the
//     binary's hash, the reference, the image recipe); compressing a binary
//     is the only slow step, and it is skipped otherwise.
//   - The Dockerfiles (agent/Dockerfile, clustermesh-apiserver/Dockerfile)
//     produce the same content with `docker build`: the same static binary
//     at the same path in scratch, with the same user and entrypoint; see
//     docs/images.md.
package images
