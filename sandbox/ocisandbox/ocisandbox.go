// Package ocisandbox is the self-hosted [sandbox.Sandbox]: each run is an OCI
// container started with runc (or crun) on the local Linux machine, so that
// promises P1, P2, P3, P13 and P14 of DESIGN.md are enforced by the kernel.
//
// # Images
//
// Images come from `docker save` archives and OCI image layouts
// ([Sandbox.ImportArchive]), the local Docker daemon ([Sandbox.ImportDaemon])
// or any go-containerregistry image ([Sandbox.Import]). Import checks every
// layer against the image config's diff IDs and bounds the unpacked size,
// then unpacks the root filesystem once into a cache keyed by the layers'
// chain ID; no layer entry, symlink or hard link can write outside it. A run
// names its image by image ID ("sha256:<hex>" of the config, as Import
// returns it). Entrypoint, Cmd, Env, User and WorkingDir come from the
// image config. [Sandbox.RemoveImage] deletes an image, and its root
// filesystem unless another image has the same layers; live runs of it
// keep that until they end.
//
// # Isolation
//
// Every run gets new pid, mount, ipc, uts, cgroup and network namespaces
// and, where the kernel allows, a user namespace (container root is an
// unprivileged host uid); no capabilities; no_new_privileges; the Docker
// default seccomp profile minus ptrace and process_vm_*, for the native
// system call ABI only (a 32-bit or x32 system call kills its thread, so
// images with 32-bit binaries do not run); masked and read-only /proc
// paths; no /sys; cgroup limits on memory (no swap), pids and CPU from
// [sandbox.Limits]. Its root filesystem is an overlay of the cached
// image (read-only) and a fresh writable layer on a size-limited tmpfs
// (Options.LayerBytes; a copy of the image on that tmpfs where overlayfs is
// unavailable), unmounted when the run ends.
//
// # Network
//
// Before the container starts, the driver creates a network namespace with
// only lo up and opens a listener on 127.0.0.1 inside it; the container
// joins that namespace by path. Each connection accepted there is relayed by
// the host to the run's gateway ([sandbox.Spec.MCPURL]; TLS is added on the
// host side for an https gateway), and [sandbox.EnvMCPURL] is
// http://127.0.0.1:<port><path>. Nothing else has a route: no DNS, no other
// address, no IPv6 but the namespace's own loopback. No iptables, no proxy.
//
// # Teardown and crashes
//
// When the agent exits, times out or is destroyed, every process is killed
// (the runtime's kill --all, then delete --force), and the network
// namespace, the writable layer and the run's state are removed. A Start
// whose ctx ends after the runtime was launched does the same before it
// returns, so that no container outlives a failed Start. All state
// lives under Options.StateDir in a directory per Sandbox (a "host"),
// locked while the Sandbox lives; [Sandbox.Reap] removes the directories,
// containers, mounts, namespaces and cgroups of hosts that died.
//
// # Errors
//
// [New] fails with [ErrHostUnsupported] when not root or when the kernel
// lacks a namespace, and with [ErrRuntimeNotFound] when the runtime binary
// is missing. Start wraps [sandbox.ErrInvalidSpec], [sandbox.ErrImageNotFound]
// and [ErrRuntimeUnsupported] (the runtime refuses this host); imports wrap
// [ErrDigestMismatch], [ErrImageTooLarge] and [ErrDockerUnavailable].
package ocisandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/compatool/compatool/sandbox"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

var (
	// ErrRuntimeNotFound reports that the OCI runtime binary is missing.
	ErrRuntimeNotFound = errors.New("ocisandbox: OCI runtime not found")
	// ErrRuntimeUnsupported reports that the OCI runtime refuses to run
	// containers on this host (for example crun on hybrid cgroup v1/v2).
	ErrRuntimeUnsupported = errors.New("ocisandbox: OCI runtime does not support this host")
	// ErrHostUnsupported reports a host that cannot run sandboxes: not
	// root, or a kernel without a needed namespace.
	ErrHostUnsupported = errors.New("ocisandbox: host cannot run sandboxes")
	// ErrDigestMismatch reports image content that does not match its
	// digest.
	ErrDigestMismatch = errors.New("ocisandbox: digest mismatch")
	// ErrImageTooLarge reports an image over Options.MaxImageBytes.
	ErrImageTooLarge = errors.New("ocisandbox: image too large")
	// ErrDockerUnavailable reports that no Docker daemon answers.
	ErrDockerUnavailable = errors.New("ocisandbox: Docker daemon not available")
)

// Options configure a [Sandbox]. Zero fields take the documented defaults.
type Options struct {
	// Runtime is the OCI runtime: a name looked up in PATH or a path.
	// Default "runc"; "crun" works too.
	Runtime string
	// StateDir holds the state of running sandboxes (bundles, mounts,
	// namespaces, the runtime's state). Default /run/compatool/ocisandbox.
	StateDir string
	// CacheDir holds imported images. Default /var/cache/compatool/ocisandbox.
	CacheDir string
	// MaxImageBytes bounds the uncompressed size of an image. Default 8 GiB.
	MaxImageBytes int64
	// LayerBytes bounds a run's writable layer (a tmpfs, whose pages also
	// count against the run's memory limit). Default 1 GiB.
	LayerBytes int64
	// NoUserNamespace disables user namespaces even where the kernel
	// allows them.
	NoUserNamespace bool
	// IDBase is the host uid and gid that container root maps to in a user
	// namespace (65536 ids from there). Default 1<<30.
	IDBase int
	// NoOverlay makes every run copy the image into its writable layer
	// instead of using overlayfs (which is otherwise used when it works).
	NoOverlay bool
	// DestroyGrace bounds how long Destroy waits for the container to die.
	// Default 10s.
	DestroyGrace time.Duration
	// Logger receives lifecycle events, never environment values. Nil
	// discards them.
	Logger *slog.Logger
}

// Sandbox runs images in OCI containers. It is safe for concurrent use.
type Sandbox struct {
	opts     Options
	log      *slog.Logger
	runtime  string // absolute path of the runtime binary
	cacheDir string
	hostID   string
	hostDir  string
	hostLock *os.File
	idShift  int
	overlay  atomic.Bool
	seq      atomic.Uint64

	mu     sync.Mutex
	images map[string]*image
	live   map[string]*instance
	users  map[string]int  // root filesystem → instances using it
	doomed map[string]bool // root filesystems to remove once unused
	closed bool
}

var (
	_ sandbox.Sandbox = (*Sandbox)(nil)
	_ sandbox.Reaper  = (*Sandbox)(nil)
)

// New checks that this host can run sandboxes and returns a Sandbox with its
// own state directory under Options.StateDir. opts may be nil. Call
// [Sandbox.Close] when done with it.
func New(opts *Options) (*Sandbox, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Runtime == "" {
		o.Runtime = "runc"
	}
	if o.StateDir == "" {
		o.StateDir = "/run/compatool/ocisandbox"
	}
	if o.CacheDir == "" {
		o.CacheDir = "/var/cache/compatool/ocisandbox"
	}
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = 8 << 30
	}
	if o.LayerBytes <= 0 {
		o.LayerBytes = 1 << 30
	}
	if o.IDBase <= 0 {
		o.IDBase = 1 << 30
	}
	if o.DestroyGrace <= 0 {
		o.DestroyGrace = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	rt, err := exec.LookPath(o.Runtime)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v; install it (apt-get install runc, or crun) or set Options.Runtime to its path", ErrRuntimeNotFound, o.Runtime, err)
	}
	if rt, err = filepath.Abs(rt); err != nil {
		return nil, fmt.Errorf("ocisandbox: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: it must run as root (euid 0) to create namespaces, mounts and cgroups; this process has euid %d", ErrHostUnsupported, os.Geteuid())
	}
	for _, ns := range []struct{ file, config string }{
		{"pid", "CONFIG_PID_NS"}, {"mnt", "CONFIG_NAMESPACES"}, {"ipc", "CONFIG_IPC_NS"},
		{"uts", "CONFIG_UTS_NS"}, {"net", "CONFIG_NET_NS"}, {"cgroup", "CONFIG_CGROUPS"},
	} {
		if _, err := os.Stat("/proc/self/ns/" + ns.file); err != nil {
			return nil, fmt.Errorf("%w: the kernel lacks the %s namespace (%s): %v", ErrHostUnsupported, ns.file, ns.config, err)
		}
	}
	s := &Sandbox{opts: o, log: o.Logger, runtime: rt, images: map[string]*image{}, live: map[string]*instance{},
		users: map[string]int{}, doomed: map[string]bool{}}
	s.overlay.Store(!o.NoOverlay)
	if s.cacheDir, err = filepath.Abs(o.CacheDir); err != nil {
		return nil, fmt.Errorf("ocisandbox: %w", err)
	}
	for _, d := range []string{filepath.Join(s.cacheDir, "images"), filepath.Join(s.cacheDir, "rootfs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("ocisandbox: cache directory: %w", err)
		}
	}
	if err := os.Chmod(s.cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("ocisandbox: cache directory: %w", err)
	}
	stateDir, err := filepath.Abs(o.StateDir)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: %w", err)
	}
	s.hostID = randomID()
	s.hostDir = filepath.Join(stateDir, "hosts", s.hostID)
	// A user namespace's root must traverse (not list) the state
	// directories to reach the run's root filesystem.
	for _, d := range []string{stateDir, filepath.Join(stateDir, "hosts"), s.hostDir, filepath.Join(s.hostDir, "runs")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("ocisandbox: state directory: %w", err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, fmt.Errorf("ocisandbox: state directory: %w", err)
		}
	}
	if s.hostLock, err = os.OpenFile(filepath.Join(s.hostDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		err = unix.Flock(int(s.hostLock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		os.RemoveAll(s.hostDir)
		return nil, fmt.Errorf("ocisandbox: lock state directory: %w", err)
	}
	if !o.NoUserNamespace {
		if err := probeUserNS(rt, o.IDBase, stateDir); err != nil {
			s.log.Warn("ocisandbox: user namespaces unavailable; container root will be host root (still without capabilities)", "reason", err)
		} else {
			s.idShift = o.IDBase
		}
	}
	s.log.Info("ocisandbox: ready", "host", s.hostID, "runtime", rt, "user_namespace", s.idShift != 0)
	return s, nil
}

// probeUserNS checks that a process can be started in a new user namespace
// with ids mapped from base.
func probeUserNS(runtime string, base int, stateDir string) error {
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && string(b) == "0\n" {
		return errors.New("user.max_user_namespaces is 0")
	}
	for d := filepath.Dir(stateDir); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (above Options.StateDir) has mode %v: others cannot traverse it, so a user namespace's root could not reach the run's files; make it o+x or choose another StateDir", d, fi.Mode().Perm())
		}
		if d == "/" {
			break
		}
	}
	cmd := exec.Command(runtime, "--version")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: idRange}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: idRange}},
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start a process in a user namespace: %v: %s", err, out)
	}
	return nil
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// HostID returns the label of this Sandbox's state directory.
func (s *Sandbox) HostID() string { return s.hostID }

// Runtime returns the path of the OCI runtime binary in use.
func (s *Sandbox) Runtime() string { return s.runtime }

// UserNamespace reports whether runs get a user namespace.
func (s *Sandbox) UserNamespace() bool { return s.idShift != 0 }

// Live returns, sorted, the ids of instances not yet destroyed.
func (s *Sandbox) Live() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.live))
}

// Close destroys every live instance, then removes this Sandbox's state
// directory and releases its lock. Later Starts fail. It is idempotent.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	live := slices.Collect(maps.Values(s.live))
	s.mu.Unlock()
	var errs []error
	for _, inst := range live {
		errs = append(errs, inst.Destroy(context.Background()))
	}
	errs = append(errs, removeCgroup("/"+cgroupParent+"/"+s.hostID), os.RemoveAll(s.hostDir))
	s.hostLock.Close()
	return errors.Join(errs...)
}

func (s *Sandbox) forget(id string) {
	s.mu.Lock()
	delete(s.live, id)
	s.mu.Unlock()
}

func (s *Sandbox) runtimeClient(logFile string) *runc.Runc {
	return &runc.Runc{Command: s.runtime, Root: filepath.Join(s.hostDir, "runtime"), Log: logFile, LogFormat: runc.JSON}
}

// cgroupPath is the cgroup (relative to every hierarchy's root) of a run.
func (s *Sandbox) cgroupPath(id string) string {
	return "/" + cgroupParent + "/" + s.hostID + "/" + id
}

const cgroupParent = "compatool-ocisandbox"
