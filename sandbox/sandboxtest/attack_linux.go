package sandboxtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Attempt implements [Attempter] with real system calls. Operations:
// "raw_socket" (raw ICMP over IPv4 or IPv6), "packet_socket" (AF_PACKET),
// "ptrace" (PTRACE_ATTACH to pid Code, or to a child it starts when Code is
// 0), "mount" (a tmpfs on Path), "userns" (a child in a new user
// namespace), "chroot" (into Path), "mknod" (a block device at Path),
// "write" (open Path for writing and write Data), "signal" (signal 0 to pid
// Code), "fill" (write Code MiB to Path, then remove it).
func (osSystem) Attempt(ctx context.Context, s Step) error {
	switch s.Text {
	case "raw_socket":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		}
		if err == nil {
			unix.Close(fd)
		}
		return err
	case "packet_socket":
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err == nil {
			unix.Close(fd)
		}
		return err
	case "ptrace":
		return ptraceAttach(ctx, s.Code)
	case "mount":
		err := unix.Mount("tmpfs", s.Path, "tmpfs", 0, "size=1m")
		if err == nil {
			_ = unix.Unmount(s.Path, unix.MNT_DETACH)
		}
		return err
	case "userns":
		cmd, err := selfCommand(ctx, Program{})
		if err != nil {
			return err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
		return cmd.Run()
	case "chroot":
		// A forked child does it, so that a success does not change this
		// process's root.
		cmd, err := selfCommand(ctx, Program{})
		if err != nil {
			return err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: s.Path}
		if err := cmd.Run(); errors.Is(err, syscall.ENOENT) {
			// The chroot worked; only the exec of a binary outside it failed.
			return nil
		} else {
			return err
		}
	case "mknod":
		err := unix.Mknod(s.Path, unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0)))
		if err == nil {
			os.Remove(s.Path)
		}
		return err
	case "write":
		f, err := os.OpenFile(s.Path, os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		if s.Data != "" {
			_, err = f.WriteString(s.Data)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case "signal":
		return unix.Kill(s.Code, 0)
	case "fill":
		return fill(s.Path, s.Code)
	default:
		return fmt.Errorf("unknown attempt %q", s.Text)
	}
}

// fill writes mib MiB of zeros to path, then removes it.
func fill(path string, mib int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for range mib {
		if _, err := f.Write(chunk); err != nil {
			return err
		}
	}
	return f.Sync()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// selfCommand returns a command that runs this binary with program p.
func selfCommand(ctx context.Context, p Program) (*exec.Cmd, error) {
	prog, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), ProgramEnv+"="+string(prog))
	return cmd, nil
}

// ptraceAttach attaches to pid, or to a child it starts if pid is 0, and
// detaches again.
func ptraceAttach(ctx context.Context, pid int) error {
	if pid == 0 {
		cmd, err := selfCommand(ctx, Program{{Op: "sleep", Duration: netTimeout}})
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		pid = cmd.Process.Pid
	}
	// ptrace requests must come from the attaching thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		return err
	}
	var ws unix.WaitStatus
	_, _ = unix.Wait4(pid, &ws, unix.WALL, nil)
	return unix.PtraceDetach(pid)
}
