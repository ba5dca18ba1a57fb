package ocisandbox

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// errUnsafeEntry reports a layer entry that would write outside the root.
var errUnsafeEntry = errors.New("unsafe layer entry")

// layerApplier applies image layers, bottom first, to a directory. Every
// write goes through an [os.Root], so no entry, symlink or hard link in a
// layer can reach outside that directory; an entry that tries is an error.
type layerApplier struct {
	root *os.Root
	// idShift is added to every uid and gid (the user namespace's host base).
	idShift int
	// budget is how many more bytes of layer streams may be read; the
	// reader charges it.
	budget int64
}

// applyLayer extracts one uncompressed layer tar, honouring OCI whiteouts.
func (a *layerApplier) applyLayer(r io.Reader) error {
	tr := tar.NewReader(r)
	written := map[string]bool{} // entries of this layer, for opaque dirs
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		name, err := cleanEntry(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		dir, base := path.Split(name)
		dir = path.Clean(dir)
		if base == ".wh..wh..opq" {
			if err := a.opaque(dir, written); err != nil {
				return err
			}
			continue
		}
		if victim, ok := strings.CutPrefix(base, ".wh."); ok {
			if err := a.root.RemoveAll(path.Join(dir, victim)); err != nil {
				return fmt.Errorf("%w: whiteout %q: %v", errUnsafeEntry, hdr.Name, err)
			}
			continue
		}
		if err := a.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("%w: parent of %q: %v", errUnsafeEntry, hdr.Name, err)
		}
		if err := a.entry(name, dir, base, hdr, tr); err != nil {
			return err
		}
		written[name] = true
	}
}

// cleanEntry returns name relative to the root, or an error if it climbs
// out of it.
func cleanEntry(name string) (string, error) {
	c := path.Clean(strings.TrimLeft(name, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: %q leaves the root", errUnsafeEntry, name)
	}
	return c, nil
}

func (a *layerApplier) entry(name, dir, base string, hdr *tar.Header, r io.Reader) error {
	mode := hdr.FileInfo().Mode()
	perm := mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if hdr.Typeflag == tar.TypeDir {
		if fi, err := a.root.Lstat(name); err == nil && fi.IsDir() {
			// A lower layer's directory keeps its contents.
		} else {
			if err := a.replace(name); err != nil {
				return err
			}
			if err := a.root.Mkdir(name, 0o700); err != nil {
				return fmt.Errorf("%w: mkdir %q: %v", errUnsafeEntry, hdr.Name, err)
			}
		}
		return a.own(name, hdr, perm)
	}
	if err := a.replace(name); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg:
		if hdr.Size > a.budget {
			return errTooLarge
		}
		f, err := a.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("%w: create %q: %v", errUnsafeEntry, hdr.Name, err)
		}
		_, err = io.CopyN(f, r, hdr.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %q: %w", hdr.Name, err)
		}
		if err := a.own(name, hdr, perm); err != nil {
			return err
		}
		return a.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	case tar.TypeSymlink:
		// The target is stored verbatim: inside the container it resolves
		// against the container's root. Only writes through it are checked.
		if err := a.root.Symlink(hdr.Linkname, name); err != nil {
			return fmt.Errorf("%w: symlink %q: %v", errUnsafeEntry, hdr.Name, err)
		}
		return a.root.Lchown(name, hdr.Uid+a.idShift, hdr.Gid+a.idShift)
	case tar.TypeLink:
		target, err := cleanEntry(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := a.root.Link(target, name); err != nil {
			return fmt.Errorf("%w: hard link %q -> %q: %v", errUnsafeEntry, hdr.Name, hdr.Linkname, err)
		}
		return nil
	case tar.TypeFifo:
		d, err := a.root.Open(dir)
		if err != nil {
			return fmt.Errorf("%w: fifo %q: %v", errUnsafeEntry, hdr.Name, err)
		}
		defer d.Close()
		if err := unix.Mkfifoat(int(d.Fd()), base, 0o600); err != nil {
			return fmt.Errorf("mkfifo %q: %w", hdr.Name, err)
		}
		return a.own(name, hdr, perm)
	default:
		// Device nodes are never created from an image: the runtime provides
		// /dev. Other types (PAX globals, sparse files of old tars) carry
		// nothing a root filesystem needs.
		return nil
	}
}

// replace removes whatever a lower layer had at name.
func (a *layerApplier) replace(name string) error {
	if _, err := a.root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := a.root.RemoveAll(name); err != nil {
		return fmt.Errorf("%w: replace %q: %v", errUnsafeEntry, name, err)
	}
	return nil
}

func (a *layerApplier) own(name string, hdr *tar.Header, perm fs.FileMode) error {
	if err := a.root.Lchown(name, hdr.Uid+a.idShift, hdr.Gid+a.idShift); err != nil {
		return fmt.Errorf("chown %q: %w", hdr.Name, err)
	}
	// Chown clears set-id bits, so the mode comes after it.
	if err := a.root.Chmod(name, perm); err != nil {
		return fmt.Errorf("chmod %q: %w", hdr.Name, err)
	}
	return nil
}

// opaque hides what lower layers put under dir: everything there that this
// layer did not write is removed.
func (a *layerApplier) opaque(dir string, written map[string]bool) error {
	fi, err := a.root.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: opaque %q: %v", errUnsafeEntry, dir, err)
	}
	d, err := a.root.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: opaque %q: %v", errUnsafeEntry, dir, err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("opaque %q: %w", dir, err)
	}
	for _, e := range entries {
		p := path.Join(dir, e.Name())
		switch {
		case !written[p]:
			if err := a.root.RemoveAll(p); err != nil {
				return fmt.Errorf("opaque %q: %w", dir, err)
			}
		case e.IsDir():
			if err := a.opaque(p, written); err != nil {
				return err
			}
		}
	}
	return nil
}
