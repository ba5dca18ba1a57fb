package ocisandbox

import (
	"os"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestPrimeCgroupAttach checks that priming writes to a cgroup of this
// thread and leaves the thread where it was.
func TestPrimeCgroupAttach(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if err := primeCgroupAttach(); err != nil {
		t.Fatalf("primeCgroupAttach: %v", err)
	}
	after, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(before), string(after)); diff != "" {
		t.Errorf("the thread's cgroups changed (-before +after):\n%s", diff)
	}
}
