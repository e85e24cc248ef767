package bpf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// The MAC addresses the datapath relies on, defined here once.
//
// Every podmesh_vxlan device in the mesh carries DeviceMAC, so a frame the
// program sends with destination DeviceMAC is PACKET_HOST at every receiver.
// The program writes InnerSourceMAC as the inner source: the receiving VXLAN
// device drops a frame whose source equals its own MAC (its loop check).
const (
	DeviceMAC      = "02:70:6d:00:00:01"
	InnerSourceMAC = "02:70:6d:00:00:02"
)

// Names of the objects under Options.PinDir.
const (
	pinIpcache  = "ipcache"
	pinCounters = "counters"
	pinDrops    = "drops"
	// pinLinkPrefix + ifindex is the pinned TCX link of one device.
	pinLinkPrefix = "tcx_egress_"
	// pinMigrating is where a migrated map is pinned before it is renamed
	// over the old one.
	pinMigratingSuffix = "_migrating" // bpffs refuses names with a dot
)

// Identity of the cls_bpf filter used where TCX is missing.
const (
	clsPriority   = 1
	clsHandle     = 0x504d // "PM"
	clsFilterName = "podmesh_egress"
)

var (
	// ErrNotBPFFS is returned (wrapped) by Load when Options.PinDir is not on
	// a bpf filesystem.
	ErrNotBPFFS = errors.New("not on a bpf filesystem")
	// ErrInvalidClusterID is returned (wrapped) by Load when
	// Options.LocalClusterID is not in 1..MaxClusterID.
	ErrInvalidClusterID = errors.New("invalid local cluster ID")
	// ErrClosed is returned by methods of a closed Datapath.
	ErrClosed = errors.New("datapath closed")
)

// Options configure Load.
type Options struct {
	// PinDir is a directory on a bpf filesystem owned by podmesh, for example
	// /sys/fs/bpf/podmesh. Load creates it if needed.
	PinDir string
	// LocalClusterID is this cluster's ID (1..MaxClusterID); it is sent as
	// the VXLAN VNI of every packet.
	LocalClusterID uint32
	// Log receives migration and attach notices. Nil discards them.
	Log logrus.FieldLogger
}

// attachMode selects how Attach hooks the program; tests force the fallback.
type attachMode int

const (
	attachAuto attachMode = iota
	attachClsBPF
)

// Datapath is the loaded program and its maps. Its methods are safe for
// concurrent use.
type Datapath struct {
	pinDir string
	log    logrus.FieldLogger
	mode   attachMode

	// mu protects objs (against Close), links and closed, and serializes
	// writers of the ipcache. The Datapath keeps no copy of the ipcache:
	// Sync reads the map, Apply writes without reading.
	mu     sync.Mutex
	objs   podmeshObjects
	links  map[int]link.Link
	closed bool
	// lastDump is how many entries the last Dump read: the capacity the
	// next one starts with.
	lastDump int
}

// Load loads the program and its maps. Maps pinned under o.PinDir are
// adopted, so an agent restart keeps the ipcache and the counters; missing
// ones are created and pinned. A pinned map whose layout differs from this
// version's (an older format or capacity) is migrated: a new map is created,
// every entry that still decodes is copied, and the new map is pinned in the
// old one's place. The program that is attached keeps using the old map
// until Attach swaps in the new program, so forwarding has no gap; call
// Attach promptly after Load.
func Load(o Options) (*Datapath, error) {
	return load(o, nil)
}

// load is Load with a hook that may change the collection spec before
// anything is created; tests use it to build "older" layouts.
func load(o Options, specHook func(*ebpf.CollectionSpec)) (_ *Datapath, err error) {
	if o.LocalClusterID == 0 || o.LocalClusterID > MaxClusterID {
		return nil, fmt.Errorf("%w: %d not in 1..%d", ErrInvalidClusterID, o.LocalClusterID, MaxClusterID)
	}
	if o.PinDir == "" {
		return nil, errors.New("load datapath: empty pin directory")
	}
	log := o.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	if err := os.MkdirAll(o.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.PinDir, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", o.PinDir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("pin directory %s: %w", o.PinDir, ErrNotBPFFS)
	}

	spec, err := loadPodmesh()
	if err != nil {
		return nil, err
	}
	if specHook != nil {
		specHook(spec)
	}
	var specs podmeshSpecs
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("assign specs: %w", err)
	}

	d := &Datapath{pinDir: o.PinDir, log: log, links: make(map[int]link.Link)}
	replacements := make(map[string]*ebpf.Map)
	defer func() {
		// LoadAndAssign took its own references; ours go either way.
		for _, m := range replacements {
			m.Close()
		}
		if err != nil {
			d.objs.Close()
		}
	}()
	pinned := []struct {
		name    string
		spec    *ebpf.MapSpec
		migrate migrateFunc
	}{
		{pinIpcache, specs.PodmeshIpcache, migrateIpcache},
		{pinCounters, specs.PodmeshCounters, nil},
		{pinDrops, specs.PodmeshDrops, nil},
	}
	for _, p := range pinned {
		m, err := d.openPinnedMap(p.spec, filepath.Join(o.PinDir, p.name), p.migrate)
		if err != nil {
			return nil, err
		}
		replacements[p.spec.Name] = m
	}

	if err := spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{MapReplacements: replacements}); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			// The whole verifier log, not just its last lines.
			return nil, fmt.Errorf("load program: %w\n%+v", err, verr)
		}
		return nil, fmt.Errorf("load program: %w", err)
	}

	cfg, err := newConfig(o.LocalClusterID)
	if err != nil {
		return nil, err
	}
	if err := d.objs.PodmeshConfig.Put(uint32(0), cfg); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	return d, nil
}

func newConfig(localClusterID uint32) (podmeshConfig, error) {
	dev, err := net.ParseMAC(DeviceMAC)
	if err != nil {
		return podmeshConfig{}, fmt.Errorf("parse device MAC: %w", err)
	}
	src, err := net.ParseMAC(InnerSourceMAC)
	if err != nil {
		return podmeshConfig{}, fmt.Errorf("parse inner source MAC: %w", err)
	}
	return podmeshConfig{
		LocalClusterId: localClusterID,
		DeviceMac:      [6]uint8(dev),
		SourceMac:      [6]uint8(src),
	}, nil
}

// migrateFunc copies what it can decode from an old map into a new one.
type migrateFunc func(from, to *ebpf.Map) (copied, dropped int, err error)

// openPinnedMap returns the map pinned at path if it is compatible with
// spec; otherwise it creates a new map, pins it at path (replacing an
// incompatible one atomically, after migrate copied its entries) and returns
// it.
func (d *Datapath) openPinnedMap(spec *ebpf.MapSpec, path string, migrate migrateFunc) (*ebpf.Map, error) {
	old, err := ebpf.LoadPinnedMap(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		m, err := ebpf.NewMap(spec)
		if err != nil {
			return nil, fmt.Errorf("create map %s: %w", spec.Name, err)
		}
		if err := m.Pin(path); err != nil {
			m.Close()
			return nil, fmt.Errorf("pin map to %s: %w", path, err)
		}
		return m, nil
	case err != nil:
		return nil, fmt.Errorf("load pinned map %s: %w", path, err)
	}
	incompat := spec.Compatible(old)
	if incompat == nil {
		d.log.WithField("path", path).Debug("Adopted pinned map")
		return old, nil
	}
	defer old.Close()

	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create map %s: %w", spec.Name, err)
	}
	copied, dropped := 0, 0
	if migrate != nil {
		if copied, dropped, err = migrate(old, m); err != nil {
			m.Close()
			return nil, fmt.Errorf("migrate %s: %w", path, err)
		}
	}
	tmp := path + pinMigratingSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.Close()
		return nil, fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	if err := m.Pin(tmp); err != nil {
		m.Close()
		return nil, fmt.Errorf("pin map to %s: %w", tmp, err)
	}
	// rename(2) replaces the old pin in one step: the path never dangles.
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		m.Close()
		return nil, fmt.Errorf("replace pinned map %s: %w", path, err)
	}
	d.log.WithFields(logrus.Fields{
		"path":    path,
		"reason":  incompat.Error(),
		"copied":  copied,
		"dropped": dropped,
	}).Warn("Migrated incompatible pinned map")
	return m, nil
}

// Attach attaches the program at tc egress of the device with ifindex in the
// calling thread's network namespace (lock the OS thread if the caller
// switches namespaces). If a link for the device is pinned under PinDir, it
// is updated to this program in one atomic step, so no packet misses the
// program during an agent restart or upgrade. Otherwise a TCX link is
// created and pinned; where the kernel has no TCX, a cls_bpf filter in
// direct-action mode is added to the device's clsact qdisc (or replaced in
// place, equally atomically). Attach is idempotent.
func (d *Datapath) Attach(ifindex int) error {
	if ifindex <= 0 {
		return fmt.Errorf("attach: invalid ifindex %d", ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.mode == attachAuto {
		err := d.attachTCXLocked(ifindex)
		if err == nil {
			d.unpinDefunctLinksLocked()
			// A filter left by an older kernel or agent would run the
			// program a second time; the TCX link is in place, so drop it.
			return removeClsFilter(ifindex)
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return err
		}
		d.log.WithField("ifindex", ifindex).Info("TCX not supported, falling back to cls_bpf")
	}
	return d.attachClsLocked(ifindex)
}

func (d *Datapath) linkPath(ifindex int) string {
	return filepath.Join(d.pinDir, pinLinkPrefix+strconv.Itoa(ifindex))
}

func (d *Datapath) attachTCXLocked(ifindex int) error {
	prog := d.objs.PodmeshEgress
	path := d.linkPath(ifindex)
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		if tcxLinkMatches(l, ifindex) {
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("update pinned link %s: %w", path, err)
			}
			d.setLinkLocked(ifindex, l)
			d.log.WithFields(logrus.Fields{"ifindex": ifindex, "path": path}).Info("Updated pinned TCX link in place")
			return nil
		}
		// The device it was attached to is gone (the link is defunct) or
		// the pin is not what we expect: replace it.
		d.log.WithFields(logrus.Fields{"ifindex": ifindex, "path": path}).Warn("Replacing stale pinned link")
		uerr := l.Unpin()
		l.Close()
		if uerr != nil {
			return fmt.Errorf("unpin stale link %s: %w", path, uerr)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}

	l, err = link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    ebpf.AttachTCXEgress,
	})
	if err != nil {
		return fmt.Errorf("attach tcx egress of ifindex %d: %w", ifindex, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin link to %s: %w", path, err)
	}
	d.setLinkLocked(ifindex, l)
	d.log.WithFields(logrus.Fields{"ifindex": ifindex, "path": path}).Info("Attached TCX link")
	return nil
}

// unpinDefunctLinksLocked unpins TCX links under pinDir whose device is
// gone (the kernel reports ifindex 0), such as the link of a podmesh_vxlan
// that was deleted and recreated with a new ifindex. Links on live devices
// are left alone. Failures only cost a stale pin and are logged.
func (d *Datapath) unpinDefunctLinksLocked() {
	paths, err := filepath.Glob(filepath.Join(d.pinDir, pinLinkPrefix+"*"))
	if err != nil {
		return
	}
	for _, path := range paths {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			continue
		}
		info, err := l.Info()
		if err == nil && info.TCX() != nil && info.TCX().Ifindex == 0 {
			if err := l.Unpin(); err != nil {
				d.log.WithError(err).WithField("path", path).Warn("Unpinning defunct link failed")
			} else {
				d.log.WithField("path", path).Info("Unpinned defunct link")
			}
		}
		l.Close()
	}
}

func tcxLinkMatches(l link.Link, ifindex int) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	tcx := info.TCX()
	return tcx != nil && int(tcx.Ifindex) == ifindex && ebpf.AttachType(tcx.AttachType) == ebpf.AttachTCXEgress
}

func (d *Datapath) setLinkLocked(ifindex int, l link.Link) {
	if old, ok := d.links[ifindex]; ok && old != l {
		old.Close()
	}
	d.links[ifindex] = l
}

// Close releases the datapath's file descriptors. Pinned maps and links stay,
// so forwarding continues until the next agent adopts them; use Remove to
// tear the datapath down.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for ifindex, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link of ifindex %d: %w", ifindex, err))
		}
	}
	d.links = nil
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close objects: %w", err))
	}
	return errors.Join(errs...)
}

// Remove tears the datapath down: it detaches and unpins every link pinned
// under pinDir, deletes podmesh's cls_bpf filter from the device with
// ifindex (in the calling thread's namespace; 0 skips this), unpins the
// maps and removes pinDir if nothing else is left in it. Missing objects are
// not an error, so Remove may be repeated.
func Remove(pinDir string, ifindex int) error {
	var errs []error
	links, err := filepath.Glob(filepath.Join(pinDir, pinLinkPrefix+"*"))
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	for _, path := range links {
		if strings.HasSuffix(path, pinMigratingSuffix) {
			continue
		}
		if err := removePinnedLink(path); err != nil {
			errs = append(errs, err)
		}
	}
	if ifindex > 0 {
		if err := removeClsFilter(ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{pinIpcache, pinCounters, pinDrops} {
		for _, path := range []string{filepath.Join(pinDir, name), filepath.Join(pinDir, name+pinMigratingSuffix)} {
			// unlink(2), not os.Remove: on bpffs a failed rmdir fallback
			// would hide ENOENT behind EPERM.
			if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
			}
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

func removePinnedLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}
	defer l.Close()
	// Detach first: unpinning alone leaves the program attached while any
	// other process still holds the link.
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detach link %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", path, err)
	}
	return nil
}

// MountBPFFS mounts a bpf filesystem on dir (creating dir) unless dir is
// already on one. The agent calls it for its --bpf-root; pins live as long
// as the mount, so the mount point must outlive the agent (the host's
// /sys/fs/bpf, or a directory the test or lab owns).
func MountBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}
