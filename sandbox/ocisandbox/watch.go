package ocisandbox

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// fileWatch reports when a file is written in full: closed after writing
// (as crun does) or renamed into place (as runc does).
type fileWatch struct {
	f     *os.File
	ready chan struct{}
}

func watchFile(path string) (*fileWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", filepath.Dir(path), err)
	}
	// A non-blocking fd in os.NewFile joins the runtime poller, so close
	// unblocks the reader.
	w := &fileWatch{f: os.NewFile(uintptr(fd), "inotify"), ready: make(chan struct{})}
	go w.read(filepath.Base(path))
	return w, nil
}

func (w *fileWatch) read(name string) {
	buf := make([]byte, 4096)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			// struct inotify_event: wd, mask, cookie, len, then the name.
			size := int(binary.NativeEndian.Uint32(buf[off+12:]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+size]
			off += unix.SizeofInotifyEvent + size
			if cstring(nameBytes) == name {
				close(w.ready)
				return
			}
		}
	}
}

func (w *fileWatch) close() { w.f.Close() }

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
