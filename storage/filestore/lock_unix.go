//go:build unix

package filestore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockRoot takes an exclusive flock on name, which the kernel releases when
// the process dies, so a crash never leaves the root locked.
func lockRoot(name string) (unlock func() error, err error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filestore: opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("filestore: %s is locked by another open Store (this process or another); open each root once and share the *Store", name)
		}
		return nil, fmt.Errorf("filestore: locking %s: %w", name, err)
	}
	return f.Close, nil
}
