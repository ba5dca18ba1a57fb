package ocisandbox

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// mountLayer mounts the run's writable layer (a tmpfs of Options.LayerBytes
// at runDir/layer) and its root filesystem at runDir/rootfs: an overlay of
// the cached image under that layer, or a copy of the image in it where
// overlayfs fails. It returns the root filesystem's path.
func (s *Sandbox) mountLayer(runDir, image string) (string, error) {
	layer := filepath.Join(runDir, "layer")
	rootfs := filepath.Join(runDir, "rootfs")
	for _, d := range []string{layer, rootfs} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("size=%d,mode=0700,uid=%d,gid=%d", s.opts.LayerBytes, s.idShift, s.idShift)
	if err := unix.Mount("tmpfs", layer, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("mount writable layer: %w", err)
	}
	upper, work := filepath.Join(layer, "upper"), filepath.Join(layer, "work")
	if s.overlay.Load() {
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return "", err
			}
			if err := os.Chown(d, s.idShift, s.idShift); err != nil {
				return "", err
			}
		}
		data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", image, upper, work)
		err := unix.Mount("overlay", rootfs, "overlay", 0, data)
		if err == nil {
			return rootfs, nil
		}
		s.overlay.Store(false)
		s.log.Warn("ocisandbox: overlayfs unavailable; runs copy the image into their writable layer from now on", "reason", err)
	}
	copyRoot := filepath.Join(layer, "root")
	if err := copyTree(image, copyRoot); err != nil {
		return "", fmt.Errorf("copy image into writable layer: %w", err)
	}
	return copyRoot, nil
}

// unmountLayer undoes mountLayer; missing mounts are fine.
func unmountLayer(runDir string) error {
	var errs []error
	for _, m := range []string{filepath.Join(runDir, "rootfs"), filepath.Join(runDir, "layer")} {
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmount unmounts path, lazily if it is busy; a path that is not a mount
// point (or does not exist) is not an error.
func unmount(path string) error {
	err := unix.Unmount(path, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(path, unix.MNT_DETACH)
	}
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", path, err)
}

// copyTree copies the directory tree src to dst (which must not exist),
// keeping modes, owners and symlinks; hard links become copies.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case d.Type().IsRegular():
			if err := copyFile(p, target); err != nil {
				return err
			}
		default:
			return nil // fifos: not needed in a copy
		}
		if st != nil {
			if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
				return err
			}
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		return os.Chmod(target, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
