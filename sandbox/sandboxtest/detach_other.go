//go:build !unix

package sandboxtest

import "syscall"

func detached() *syscall.SysProcAttr { return nil }
