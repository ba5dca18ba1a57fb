package ocisandbox_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
)

// TestRuntimeKilled kills the runtime process of a running instance. Its
// container lives on in its own namespaces until teardown, which must
// remove it with the runtime's state, though no runtime reported its end.
func TestRuntimeKilled(t *testing.T) {
	stateDir := filepath.Join(traversableDir(t), "state")
	s := newSandbox(t, "runc", &ocisandbox.Options{StateDir: stateDir})
	gw := sandboxtest.NewGateway(t)
	const beat = "runtime-killed-beat"
	inst, err := s.Start(t.Context(), gw.Spec("runtime-killed", importProgram(t, s, sandboxtest.Program{{Op: "heartbeat", Text: beat}})))
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Destroy(context.Background())
	awaitBeats(t, gw, beat, 1, inst)
	pid := runtimeProcess(t, s.Runtime(), inst.ID())
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	exit, err := inst.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exit.Code != -1 || !strings.Contains(exit.Reason, "runtime failed") {
		t.Errorf("exit = %+v, want code -1 with an infrastructure reason", exit)
	}
	if err := inst.Destroy(context.Background()); err != nil {
		t.Errorf("Destroy: %v", err)
	}
	if procs := processesOf(s.HostID()); len(procs) != 0 {
		t.Errorf("processes %v of the run survive the runtime's death", procs)
	}
	state := filepath.Join(stateDir, "hosts", s.HostID(), "runtime", inst.ID())
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the runtime's state of the container survives: stat %s = %v", state, err)
	}
}

// runtimeProcess returns the pid of the foreground runtime process
// running the container id.
func runtimeProcess(t *testing.T, runtime, id string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if exe == runtime && len(args) > 0 && args[len(args)-1] == id && bytes.Contains(cmdline, []byte("\x00run\x00")) {
			return pid
		}
	}
	t.Fatalf("no %s process runs container %s", runtime, id)
	return 0
}
