//go:build !linux

package sandboxtest

import (
	"context"
	"errors"
)

// Attempt blocks every attempt: the operations are Linux system calls.
func (osSystem) Attempt(context.Context, Step) error {
	return errors.New("privileged operations are only tried on Linux")
}
