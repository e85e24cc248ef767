package clustermesh

import "unsafe"

// unsafePointer converts a byte in an inotify read buffer to a pointer, the
// one place the package needs unsafe (inotify events are C structs).
func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
