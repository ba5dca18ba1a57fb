// Command compat32 tries one system call through the 32-bit compat ABI
// (int 0x80 getpid on amd64) on a thread of its own and prints what
// happened: "compat32 returned <pid>" when the kernel ran it, "blocked
// compat32" when the thread was killed (as a seccomp filter for the native
// ABI only does), "unsupported compat32" on other architectures. It exits 0
// in every case.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if !supported {
		fmt.Println("unsupported compat32")
		return
	}
	tid := make(chan int, 1)
	ret := make(chan int32, 1)
	go func() {
		// The thread dies if the call is refused; never hand it back.
		runtime.LockOSThread()
		tid <- unix.Gettid()
		ret <- compatGetpid()
	}()
	stat := fmt.Sprintf("/proc/self/task/%d/stat", <-tid)
	// Either the call returns or its thread dies: gone from /proc, or a
	// zombie if it was the thread group leader. Polling is the only way to
	// see a thread die.
	for range 10000 {
		select {
		case r := <-ret:
			fmt.Printf("compat32 returned %d\n", r)
			return
		default:
		}
		if b, err := os.ReadFile(stat); err != nil || dead(string(b)) {
			fmt.Println("blocked compat32")
			return
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println("compat32 hung")
}

// dead reports whether a /proc/<pid>/stat line (pid (comm) state …) shows
// a zombie or dead task.
func dead(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && strings.ContainsRune("ZXx", rune(stat[i+2]))
}
