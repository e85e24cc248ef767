// Package kvstore is podmesh's thin layer over the etcd v3 client: it builds a
// client from an etcd-client YAML file (the format of a remote-cluster file in
// the agent's config directory) and runs list-then-watch loops that survive
// disconnects and compaction.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - A config file is untrusted input from a mounted Secret. Relative paths in
//     it resolve against the directory that holds the file (not the working
//     directory), errors name the file, and key material is never logged.
//     Hash covers the YAML and every file it references, so a certificate
//     rotation that rewrites only the PEM files is still noticed.
//   - ListWatcher emits typed events (Upsert, Delete) and a Listed marker
//     after every full listing. A consumer reconciles on Listed: everything it
//     has not been told to delete still exists. On a re-list (after
//     compaction) only keys that vanished are reported as deleted, and keys
//     whose modification revision did not change are not re-emitted, so a
//     consumer never sees a spurious withdrawal.
//   - A watch that ends (server restart, leader loss, network cut) resumes
//     from the last seen revision + 1, so no change is lost and none is seen
//     twice. Only ErrCompacted forces a re-list: the history it would need is
//     gone.
//   - A ListWatcher trusts that the server's history is the one it listed.
//     An etcd rebuilt from scratch (a replaced clustermesh-apiserver pod
//     with an emptyDir) behind the same address would make a resumed watch
//     wait for revisions of a different history, and the etcd client
//     reconnects and resumes on its own. A rebuild always breaks the
//     connection, though (the etcd and its proxy live in one process), so
//     consumers of remote data end their session when ConnectionLost fires
//     and list again in a new one (a new ListWatcher).
//   - The listing is paginated at one fixed revision, so a large prefix is
//     never one huge response and the listing is still a consistent snapshot.
package kvstore
