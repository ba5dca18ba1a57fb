package ocisandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Reap removes what Sandboxes of hosts that died left under the same
// StateDir: their containers (every process killed), mounts, network
// namespaces, cgroups and state. A host directory whose lock is held
// belongs to a live Sandbox, in this process or another, and is left alone.
// The harness calls Reap once at start-up; it is safe to call at any time.
func (s *Sandbox) Reap(ctx context.Context) error {
	hosts, err := os.ReadDir(filepath.Dir(s.hostDir))
	if err != nil {
		return fmt.Errorf("ocisandbox: reap: %w", err)
	}
	var errs []error
	for _, h := range hosts {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ocisandbox: reap: %w", err)
		}
		if !h.IsDir() || h.Name() == s.hostID {
			continue
		}
		dir := filepath.Join(filepath.Dir(s.hostDir), h.Name())
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close() // alive
			continue
		}
		s.log.Info("ocisandbox: reaping sandboxes of a dead host", "host", h.Name())
		err = s.reapHost(ctx, h.Name(), dir)
		lock.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", h.Name(), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ocisandbox: reap: %w", err)
	}
	return nil
}

func (s *Sandbox) reapHost(ctx context.Context, hostID, dir string) error {
	var errs []error
	rt := &runc.Runc{Command: s.runtime, Root: filepath.Join(dir, "runtime")}
	if states, err := os.ReadDir(rt.Root); err == nil {
		for _, st := range states {
			_ = rt.Kill(ctx, st.Name(), int(unix.SIGKILL), &runc.KillOpts{All: true})
			if err := rt.Delete(ctx, st.Name(), &runc.DeleteOpts{Force: true}); err != nil && !notExist(err) {
				errs = append(errs, fmt.Errorf("delete container %s: %w", st.Name(), err))
			}
		}
	}
	// Whatever the runtime lost track of dies with its cgroup.
	errs = append(errs, removeCgroup("/"+cgroupParent+"/"+hostID))
	// Unmount deepest first: rootfs overlays before the layer tmpfs below.
	var points []string
	for _, m := range mountInfo() {
		if strings.HasPrefix(m.point, dir+"/") {
			points = append(points, m.point)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}
