//go:build unix

package sandboxtest

import "syscall"

// detached puts a spawned child in its own session, so that it survives its
// parent and only the sandbox can stop it.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
