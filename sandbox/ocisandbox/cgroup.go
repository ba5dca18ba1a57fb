package ocisandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// cgroupMounts returns the mount points of every cgroup hierarchy (v1
// controllers and the v2 unified tree).
func cgroupMounts() ([]string, error) {
	var out []string
	for _, m := range mountInfo() {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, m.point)
		}
	}
	return out, nil
}

// removeCgroup kills whatever still runs in the cgroup rel (relative to
// every hierarchy's root) and removes it, children first, in every
// hierarchy. A cgroup that does not exist is not an error.
func removeCgroup(rel string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		dir := filepath.Join(m, rel)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for _, d := range slices.Backward(dirs) {
			if err := rmCgroupDir(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rmCgroupDir kills the processes of one cgroup directory and removes it.
// A cgroup cannot be removed while a process is in it, and a killed process
// leaves it only once it has exited, so it retries a bounded number of
// times after each kill.
func rmCgroupDir(dir string) error {
	var err error
	for range 200 {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		// cgroup v2 kills everything at once; v1 needs the pids one by one.
		if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) != nil {
			for _, pid := range cgroupPids(dir) {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		waitCgroupEmpty(dir)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func cgroupPids(dir string) []int {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitCgroupEmpty waits, by polling cgroup.procs with a short pause the
// kernel provides (a zero-timeout-free ppoll on nothing), until the cgroup
// has no process or a few milliseconds passed.
func waitCgroupEmpty(dir string) {
	for range 50 {
		if len(cgroupPids(dir)) == 0 {
			return
		}
		ts := unix.NsecToTimespec(1e6)
		_, _ = unix.Ppoll(nil, &ts, nil)
	}
}

// primeCgroupAttach moves the calling goroutine's thread into the cgroup
// it is already in, which changes nothing but primes a kernel lock. Every
// move of a task between cgroups takes the global cgroup_threadgroup_rwsem
// for writing; when it was idle, the writer first waits for an RCU grace
// period (5–10 ms measured here), and writers that follow within about
// another grace period pass at once. The runtime's cgroup.procs writes, a
// few milliseconds later and on the critical path of Start (the
// container's init waits for them), then find the lock primed. Callers
// ignore the error: without priming, those writes are only slower.
func primeCgroupAttach() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return err
	}
	tid := []byte(strconv.Itoa(unix.Gettid()))
	errs := []error{errors.New("no cgroup hierarchy of this thread found")}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// hierarchy-ID:controllers:path; "0::path" is cgroup v2.
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, m := range cgroupHierarchies() {
			var file string
			switch {
			case f[0] == "0" && m.fstype == "cgroup2":
				file = "cgroup.threads" // moves the one thread written
			case f[0] != "0" && m.fstype == "cgroup" && hasAll(m.opts, f[1]):
				file = "tasks" // likewise in cgroup v1
			default:
				continue
			}
			err := os.WriteFile(filepath.Join(m.point, f[2], file), tid, 0)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cgroupHierarchies lists the mounted cgroup hierarchies once: they are
// mounted at boot, and a stale list would only make priming fail.
var cgroupHierarchies = sync.OnceValue(func() []mountEntry {
	return slices.DeleteFunc(mountInfo(), func(m mountEntry) bool { return m.fstype != "cgroup" && m.fstype != "cgroup2" })
})

// hasAll reports whether every comma-separated item of want is one of have.
func hasAll(have, want string) bool {
	items := strings.Split(have, ",")
	for w := range strings.SplitSeq(want, ",") {
		if !slices.Contains(items, w) {
			return false
		}
	}
	return want != ""
}

type mountEntry struct{ point, fstype, opts string }

// mountInfo parses /proc/self/mountinfo.
func mountInfo() []mountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		e := mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1]}
		if sep+3 < len(fields) {
			e.opts = fields[sep+3]
		}
		out = append(out, e)
	}
	return out
}

// unescapeMount undoes the octal escapes (\040 for space…) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
