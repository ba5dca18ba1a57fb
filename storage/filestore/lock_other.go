//go:build !unix

package filestore

import (
	"fmt"
	"os"
)

// lockRoot creates the lock file but cannot lock it on this system: the
// caller must not open one root from two processes.
func lockRoot(name string) (unlock func() error, err error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("filestore: opening lock file: %w", err)
	}
	return f.Close, nil
}
