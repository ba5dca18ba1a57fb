package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// An Attempter is a [System] that can try the privileged operations of the
// "attempt" step. [OSSystem] is one on Linux; a System that is not (such as
// an in-memory one) answers every attempt as blocked.
type Attempter interface {
	// Attempt tries the operation named by s.Text with s's parameters and
	// returns nil if it succeeded (the sandbox let it through), or why it
	// failed. It must undo what succeeded where it can.
	Attempt(ctx context.Context, s Step) error
}

// errNoAttempts is the reason a System without Attempt blocks an attempt.
var errNoAttempts = errors.New("this system offers no privileged operations")

// maxForks bounds the "fork_bomb" step where nothing stops it.
const maxForks = 10000

// Attack steps that a sandbox must block, as driver-neutral programs.
// Each prints "blocked …" when the sandbox holds, "REACHED …" when not.
var (
	// AttackRawSocket opens raw IPv4/IPv6 and packet sockets.
	AttackRawSocket = Program{{Op: "attempt", Text: "raw_socket"}, {Op: "attempt", Text: "packet_socket"}}
	// AttackPrivileged tries to ptrace a child, mount, create a user
	// namespace, chroot and create a device node.
	AttackPrivileged = Program{
		{Op: "attempt", Text: "ptrace"},
		{Op: "attempt", Text: "mount", Path: "/tmp"},
		{Op: "attempt", Text: "userns"},
		{Op: "attempt", Text: "chroot", Path: "/tmp"},
		{Op: "attempt", Text: "mknod", Path: "/tmp/sandboxtest-disk"},
	}
	// AttackKernelFiles writes to kernel interfaces that would change the
	// host.
	AttackKernelFiles = Program{
		{Op: "attempt", Text: "write", Path: "/proc/sys/kernel/core_pattern", Data: "|/tmp/x"},
		{Op: "attempt", Text: "write", Path: "/proc/sysrq-trigger"},
		{Op: "attempt", Text: "write", Path: "/sys/fs/cgroup/cgroup.procs", Data: "1"},
		{Op: "attempt", Text: "write", Path: "/proc/sys/net/ipv4/ip_forward", Data: "1"},
	}
)

// attempt runs an "attempt" step.
func attempt(ctx context.Context, sys System, s Step) error {
	label := "attempt " + s.Text
	if s.Path != "" {
		label += " " + s.Path
	}
	if s.Code != 0 {
		label += " " + strconv.Itoa(s.Code)
	}
	err := errNoAttempts
	if a, ok := sys.(Attempter); ok {
		err = a.Attempt(ctx, s)
	}
	return report(sys, err, label)
}

// forkBomb spawns heartbeat children with marker until the sandbox refuses
// one, and prints "blocked fork_bomb" if it did.
func forkBomb(sys System, marker string) error {
	for n := range maxForks {
		if err := sys.Spawn(Program{{Op: "heartbeat", Text: marker}}); err != nil {
			return report(sys, fmt.Errorf("spawn %d refused: %w", n+1, err), "fork_bomb")
		}
	}
	return report(sys, nil, "fork_bomb")
}
