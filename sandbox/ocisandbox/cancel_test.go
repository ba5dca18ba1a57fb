package ocisandbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/benchrun"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"golang.org/x/sys/unix"
)

// TestStartCancelledWhileRuntimeStarts cancels Start between the launch of
// `runc run` and the container's pid file, deterministically: the runtime
// is a wrapper that stops at a gate (a FIFO) before it execs runc. Start
// must not return before the runtime has ended, and must leave nothing.
func TestStartCancelledWhileRuntimeStarts(t *testing.T) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("runc is needed (apt-get install runc): %v", err)
	}
	for _, tc := range []struct {
		name string
		// release lets the gated runtime go on after the cancellation: it
		// then creates the container, which Start must kill. Otherwise the
		// runtime hangs at the gate, and Start must kill the runtime.
		release bool
	}{
		{"runtime goes on to create the container", true},
		{"runtime hangs", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := traversableDir(t)
			gate := filepath.Join(dir, "gate")
			if err := unix.Mkfifo(gate, 0o600); err != nil {
				t.Fatal(err)
			}
			wrapper := filepath.Join(dir, "gated-runc")
			script := fmt.Sprintf("#!/bin/sh\nfor a in \"$@\"; do\n\tif [ \"$a\" = run ]; then\n\t\tread -r _ < '%s' || true\n\t\tbreak\n\tfi\ndone\nexec '%s' \"$@\"\n", gate, runc)
			if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			var logs lockedBuffer
			opts := &ocisandbox.Options{StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"), DestroyGrace: 2 * time.Second,
				Logger: slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), &slog.HandlerOptions{Level: slog.LevelDebug}))}
			s := newSandbox(t, wrapper, opts)
			gw := sandboxtest.NewGateway(t)
			img := importProgram(t, s, sandboxtest.Program{{Op: "heartbeat", Text: "cancelled-start"}})

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			started := make(chan error, 1)
			go func() {
				inst, err := s.Start(ctx, gw.Spec("cancelled", img))
				if err == nil {
					inst.Destroy(context.Background())
				}
				started <- err
			}()
			// Opening the FIFO for writing returns once the runtime has
			// opened it for reading: it is at the gate.
			opened := make(chan *os.File, 1)
			go func() {
				f, err := os.OpenFile(gate, os.O_WRONLY, 0)
				if err != nil {
					t.Error(err)
				}
				opened <- f
			}()
			var w *os.File
			select {
			case w = <-opened:
			case err := <-started:
				// Unblock the opener.
				if r, oerr := os.OpenFile(gate, os.O_RDONLY|unix.O_NONBLOCK, 0); oerr == nil {
					<-opened
					r.Close()
				}
				t.Fatalf("Start returned %v before the runtime reached the gate", err)
			}
			defer w.Close()
			cancel()
			if tc.release {
				if _, err := w.WriteString("go\n"); err != nil {
					t.Fatal(err)
				}
				w.Close()
			}
			if err := <-started; !errors.Is(err, context.Canceled) {
				t.Errorf("Start = %v, want context.Canceled", err)
			}
			assertNothingLeft(t, s, opts)
			// Otherwise the case did not test what it says.
			const msg = "the container started after the cancellation"
			if got := strings.Contains(logs.String(), msg); got != tc.release {
				t.Errorf("log has %q: %v, want %v", msg, got, tc.release)
			}
		})
	}
}

// TestStartCancelledAtRandomPoints cancels Start after delays spread over
// twice the time a start takes, with the real runtime, so that the
// cancellation lands in every phase: provisioning, the runtime creating
// the container, and after. Whatever the phase, a failed Start leaves
// nothing and a successful one is destroyed as usual.
func TestStartCancelledAtRandomPoints(t *testing.T) {
	root := traversableDir(t)
	opts := &ocisandbox.Options{StateDir: filepath.Join(root, "state"), CacheDir: filepath.Join(root, "cache")}
	s := newSandbox(t, "runc", opts)
	gw := sandboxtest.NewGateway(t)
	img := importProgram(t, s, sandboxtest.Program{{Op: "heartbeat", Text: "random-cancel"}})

	t0 := time.Now()
	inst, err := s.Start(t.Context(), gw.Spec("measure", img))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	if err := inst.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	const attempts = 24
	var cancelled, ran int
	for i := range attempts {
		delay := took * time.Duration(i) / (attempts / 2)
		ctx, cancel := context.WithCancel(t.Context())
		timer := time.AfterFunc(delay, cancel)
		inst, err := s.Start(ctx, gw.Spec(fmt.Sprintf("cancel-%d", i), img))
		timer.Stop()
		cancel()
		switch {
		case err == nil:
			ran++
			if err := inst.Destroy(context.Background()); err != nil {
				t.Errorf("attempt %d: Destroy: %v", i, err)
			}
		case errors.Is(err, context.Canceled):
			cancelled++
		default:
			t.Errorf("attempt %d (cancel after %v): Start = %v, want success or context.Canceled", i, delay, err)
		}
		assertNothingLeft(t, s, opts)
		if t.Failed() {
			t.Fatalf("attempt %d (cancel after %v) left the above", i, delay)
		}
	}
	t.Logf("a start took %v; of %d starts cancelled within twice that, %d were cancelled and %d ran", took, attempts, cancelled, ran)
}

// assertNothingLeft fails the test if the Sandbox, with no instance
// meant to be live, holds anything of a run: a live instance, a process
// (of the runtime or the container), a mount or network namespace, a
// run's cgroup, or state of a run or of the runtime.
func assertNothingLeft(t *testing.T, s *ocisandbox.Sandbox, opts *ocisandbox.Options) {
	t.Helper()
	if live := s.Live(); len(live) != 0 {
		t.Errorf("Live() = %v", live)
	}
	got := benchrun.CountOwned(benchrun.Owner{HostID: s.HostID(), Dirs: []string{opts.StateDir, opts.CacheDir}})
	// The Sandbox's parent cgroup lives as long as the Sandbox; its runs'
	// cgroups are checked below.
	got.Cgroups = 0
	if got != (benchrun.Resources{}) {
		t.Errorf("the Sandbox holds %+v", got)
	}
	if cg := runCgroups(s.HostID()); len(cg) != 0 {
		t.Errorf("run cgroups left: %v", cg)
	}
	host := filepath.Join(opts.StateDir, "hosts", s.HostID())
	for _, d := range []string{"runs", "runtime"} {
		if left, _ := os.ReadDir(filepath.Join(host, d)); len(left) != 0 {
			t.Errorf("state left in %s: %v", filepath.Join(host, d), left)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runCgroups lists the cgroups of runs of the Sandbox labelled hostID.
func runCgroups(hostID string) []string {
	var out []string
	for _, p := range []string{"/sys/fs/cgroup/*/compatool-ocisandbox/" + hostID + "/*", "/sys/fs/cgroup/compatool-ocisandbox/" + hostID + "/*"} {
		m, _ := filepath.Glob(p)
		for _, d := range m {
			if fi, err := os.Stat(d); err == nil && fi.IsDir() {
				out = append(out, d)
			}
		}
	}
	return out
}
