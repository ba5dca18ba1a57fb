package ocisandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/compatool/compatool/sandbox"
	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The runtime's default masked and read-only /proc and /sys paths (runc's
// `spec` command and Docker use the same lists).
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
		"/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
	}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// unseccomped are syscalls the default profile allows but no agent needs:
// tracing or reading another process's memory.
var unseccomped = []string{"ptrace", "process_vm_readv", "process_vm_writev"}

// runSpec is what buildSpec needs to know about one run.
type runSpec struct {
	id      string
	rootfs  string // the mounted root filesystem
	netns   string // path of the pinned network namespace
	env     []string
	limits  sandbox.Limits
	idShift int // 0: no user namespace
	cgroup  string
}

// buildSpec returns the OCI runtime configuration of a run of im.
func buildSpec(im *image, r runSpec) (*specs.Spec, error) {
	cfg := im.config.Config
	args := append(slices.Clone(cfg.Entrypoint), cfg.Cmd...)
	if len(args) == 0 {
		return nil, fmt.Errorf("ocisandbox: image %s has neither Entrypoint nor Cmd; give it one", im.id)
	}
	uid, gid, err := resolveUser(im.rootfs, cfg.User)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: %w", im.id, err)
	}
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	noCaps := &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}}
	mem := r.limits.MemoryBytes
	pids := r.limits.PIDs
	period := uint64(100000)
	quota := int64(r.limits.CPUs * float64(period))
	oomAdj := 1000
	s := &specs.Spec{
		Version: specVersion,
		Process: &specs.Process{
			User:            specs.User{UID: uid, GID: gid},
			Args:            args,
			Env:             r.env,
			Cwd:             cwd,
			Capabilities:    noCaps,
			NoNewPrivileges: true,
			OOMScoreAdj:     &oomAdj,
			Rlimits: []specs.POSIXRlimit{
				{Type: "RLIMIT_NOFILE", Hard: 4096, Soft: 4096},
				{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
			},
		},
		Root:     &specs.Root{Path: r.rootfs},
		Hostname: "sandbox",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: r.netns},
			},
			CgroupsPath: r.cgroup,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: &mem, Swap: &mem},
				Pids:    &specs.LinuxPids{Limit: &pids},
				CPU:     &specs.LinuxCPU{Quota: &quota, Period: &period},
			},
			MaskedPaths:       maskedPaths,
			ReadonlyPaths:     readonlyPaths,
			RootfsPropagation: "private",
		},
	}
	if r.idShift != 0 {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(r.idShift), Size: idRange}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(r.idShift), Size: idRange}}
	}
	sc, err := seccomp.GetDefaultProfile(s)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: seccomp profile: %w", err)
	}
	for i := range sc.Syscalls {
		if sc.Syscalls[i].Action == specs.ActAllow {
			sc.Syscalls[i].Names = slices.DeleteFunc(sc.Syscalls[i].Names, func(n string) bool { return slices.Contains(unseccomped, n) })
		}
	}
	sc.Syscalls = slices.DeleteFunc(sc.Syscalls, func(c specs.LinuxSyscall) bool { return len(c.Names) == 0 })
	// The profile lists the native ABI first, then the compat ones (i386
	// and x32 on amd64, arm on arm64). Keeping only the native one makes a
	// compat system call (int 0x80, a 32-bit binary) kill its thread
	// instead of reaching the kernel's least-exercised entry points, and
	// cuts the runtime's filter compilation from ~13 ms to ~3 ms, most of
	// the i386 cost being its multiplexed socketcall and ipc rules.
	sc.Architectures = sc.Architectures[:min(len(sc.Architectures), 1)]
	s.Linux.Seccomp = sc
	return s, nil
}

// specVersion is the oldest runtime-spec version with every field used
// here; runtimes reject versions newer than theirs (crun 1.8 knows 1.0).
const specVersion = "1.0.2"

// idRange is how many ids a user namespace maps.
const idRange = 65536

// resolveUser turns an image's User ("", "name", "uid", "uid:gid",
// "name:group") into numeric ids, reading /etc/passwd and /etc/group of the
// root filesystem for names and for a user's primary group.
func resolveUser(rootfs, user string) (uid, gid uint32, err error) {
	if user == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		uid = uint32(n)
		if _, primary, err := lookupName(rootfs, "/etc/passwd", func(f []string) bool { return f[2] == u }); err == nil {
			gid = primary
		}
	} else if uid, gid, err = lookupName(rootfs, "/etc/passwd", func(f []string) bool { return f[0] == u }); err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", u, err)
	}
	if hasGroup {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			gid = uint32(n)
		} else if gid, _, err = lookupName(rootfs, "/etc/group", func(f []string) bool { return f[0] == g }); err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", g, err)
		}
	}
	if uid >= idRange || gid >= idRange {
		return 0, 0, fmt.Errorf("user %q maps to ids %d:%d, beyond the %d ids a sandbox maps", user, uid, gid, idRange)
	}
	return uid, gid, nil
}

// lookupName returns the id (third field) of the first line of a passwd or
// group file of the root filesystem that match accepts, and for passwd the
// primary gid.
func lookupName(rootfs, file string, match func([]string) bool) (id, gid uint32, err error) {
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return 0, 0, err
	}
	defer root.Close()
	data, err := root.ReadFile(strings.TrimPrefix(file, "/"))
	if err != nil {
		return 0, 0, fmt.Errorf("not resolvable without %s: %w", file, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 || !match(f) {
			continue
		}
		n, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("bad id in %s: %q", file, f[2])
		}
		if len(f) >= 4 {
			if g, err := strconv.ParseUint(f[3], 10, 32); err == nil {
				gid = uint32(g)
			}
		}
		return uint32(n), gid, nil
	}
	return 0, 0, fmt.Errorf("not found in %s", file)
}
