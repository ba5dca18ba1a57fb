package ocisandbox_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
)

// crashHelperEnv makes the test binary act as a host that starts one
// instance and dies without destroying it (see crashHelper).
const crashHelperEnv = "OCISANDBOX_CRASH_HELPER"

// crashHelper runs in a child process: it starts the instance described by
// its environment, prints its host id and exits without Destroy or Close,
// as a crashed host would.
func crashHelper() {
	s, err := ocisandbox.New(&ocisandbox.Options{StateDir: os.Getenv("STATE_DIR"), CacheDir: os.Getenv("CACHE_DIR")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, err = s.Start(context.Background(), sandbox.Spec{
		RunID: "crashed", Image: os.Getenv("IMAGE"), MCPURL: os.Getenv("MCP_URL"),
		Env: map[string]string{sandbox.EnvMCPToken: os.Getenv("TOKEN")},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(s.HostID())
	os.Exit(0)
}

func TestReapCrashedHost(t *testing.T) {
	root := traversableDir(t)
	opts := &ocisandbox.Options{StateDir: filepath.Join(root, "state"), CacheDir: filepath.Join(root, "cache")}
	alive := newSandbox(t, "runc", opts)
	gw := sandboxtest.NewGateway(t)
	const crashed, living = "crashed-host-beat", "living-host-beat"
	img := importProgram(t, alive, sandboxtest.Program{{Op: "spawn", Text: crashed}, {Op: "heartbeat", Text: crashed}})

	// A live host's instance must survive the reaper.
	keep, err := alive.Start(t.Context(), gw.Spec("living", importProgram(t, alive, sandboxtest.Program{{Op: "heartbeat", Text: living}})))
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Destroy(context.Background())

	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"=1", "STATE_DIR="+opts.StateDir, "CACHE_DIR="+opts.CacheDir,
		"IMAGE="+img, "MCP_URL="+gw.URL(), "TOKEN="+gw.Token())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crash helper: %v", err)
	}
	deadHost := strings.TrimSpace(string(out))
	deadDir := filepath.Join(opts.StateDir, "hosts", deadHost)
	// The crashed host's instance lives on (cut off from its gateway, since
	// the relay died with the host): that is what Reap is for.
	if len(processesOf(deadHost)) == 0 || len(mountsUnder(deadDir)) == 0 {
		t.Fatalf("the crashed host left no processes or mounts; the test proves nothing")
	}

	reaper := newSandbox(t, "runc", opts)
	if err := reaper.Reap(t.Context()); err != nil {
		t.Fatalf("Reap: %v", err)
	}
	if procs := processesOf(deadHost); len(procs) != 0 {
		t.Errorf("processes %v of the crashed host survive Reap", procs)
	}
	if m := mountsUnder(deadDir); len(m) != 0 {
		t.Errorf("mounts %v of the crashed host survive Reap", m)
	}
	if _, err := os.Stat(deadDir); !os.IsNotExist(err) {
		t.Errorf("state of the crashed host survives Reap: stat %s = %v", deadDir, err)
	}
	if cg := cgroupsOf(deadHost); len(cg) != 0 {
		t.Errorf("cgroups %v of the crashed host survive Reap", cg)
	}
	// The living host's instance still beats.
	if procs := processesOf(alive.HostID()); len(procs) == 0 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Millisecond)
		exit, err := keep.Wait(ctx)
		cancel()
		t.Fatalf("Reap killed a living host's instance: %+v %v %+v", exit, err, keep.Logs())
	}
	awaitBeats(t, gw, living, gw.Beats(living)+2, keep)
	if err := reaper.Reap(t.Context()); err != nil {
		t.Errorf("second Reap = %v, want nil", err)
	}
}

// mountsUnder lists mount points below dir.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	return out
}

// cgroupsOf lists the cgroup directories of the Sandbox labelled hostID.
func cgroupsOf(hostID string) []string {
	m, _ := filepath.Glob("/sys/fs/cgroup/*/compatool-ocisandbox/" + hostID)
	n, _ := filepath.Glob("/sys/fs/cgroup/compatool-ocisandbox/" + hostID)
	return append(m, n...)
}
