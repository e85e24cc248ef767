// Package upgrade proves that podmesh upgrades and downgrades without loss:
// its test builds the previous tagged release from git (git archive of the
// tag, the release's own images package — no worktree, nothing pushed),
// installs it on a real-kubelet lab (test/lab), and replaces the agent
// DaemonSet and the clustermesh-apiserver Deployment by the current ones
// under traffic, one component and one cluster at a time, so that the mesh
// runs mixed versions in between (old agents reading a new
// clustermesh-apiserver and the reverse); then it downgrades again.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Each release is applied with its own daemonset/ (an overlay per
//     cluster, as docs/install.md has a user write), so manifest changes
//     between releases are part of what is tested, not just images.
//   - Images of the two releases differ by tag (the tag, and "dev"), so the
//     DaemonSet and Deployment really roll even when the binaries are
//     identical; every node imports both sets when it starts.
//   - The traffic and the convergence checks are the chaos soak's
//     (test/chaos/soak) and the lab's; loss must be 0 and no route or
//     ipcache entry may be withdrawn on any node during either direction.
//
// `make test-upgrade` runs it (PODMESH_UPGRADE=1; it is skipped otherwise,
// because a second real lab next to test/lab's would not fit the machine).
package upgrade
