package ocisandbox_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var agent struct {
	once  sync.Once
	dir   string
	bin   string
	layer v1.Layer
	err   error
}

func TestMain(m *testing.M) {
	if os.Getenv(crashHelperEnv) != "" {
		crashHelper()
	}
	code := m.Run()
	if agent.dir != "" {
		os.RemoveAll(agent.dir)
	}
	os.Exit(code)
}

// agentLayer builds the sandboxtest agent once per test binary.
func agentLayer(t testing.TB) v1.Layer {
	t.Helper()
	agent.once.Do(func() {
		if agent.dir, agent.err = os.MkdirTemp("", "ocisandbox-agent-"); agent.err != nil {
			return
		}
		if agent.bin, agent.err = testimage.BuildAgent(context.Background(), agent.dir); agent.err == nil {
			agent.layer, agent.err = testimage.AgentLayer(agent.bin)
		}
	})
	if agent.err != nil {
		t.Fatalf("build the test agent: %v", agent.err)
	}
	return agent.layer
}

// agentBinary returns the path of the static test agent.
func agentBinary(t testing.TB) string {
	agentLayer(t)
	return agent.bin
}

// newSandbox returns a Sandbox on runtime with state and cache in temporary
// directories. Missing runc or root is a failure with the reason, never a
// skip: CI installs runc and crun and runs as root.
func newSandbox(t testing.TB, runtime string, opts *ocisandbox.Options) *ocisandbox.Sandbox {
	t.Helper()
	var o ocisandbox.Options
	if opts != nil {
		o = *opts
	}
	o.Runtime = runtime
	if o.StateDir == "" {
		o.StateDir = filepath.Join(traversableDir(t), "state")
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(traversableDir(t), "cache")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := ocisandbox.New(&o)
	if err != nil {
		t.Fatalf("ocisandbox.New: %v\n(these tests need root and the %s binary: apt-get install runc crun)", err, runtime)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// importProgram packs the agent running p into a `docker save` archive and
// imports it.
func importProgram(t testing.TB, s *ocisandbox.Sandbox, p sandboxtest.Program, extra ...v1.Layer) string {
	t.Helper()
	img, err := testimage.Image(p, append([]v1.Layer{agentLayer(t)}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	return importImage(t, s, img)
}

// importImage writes img as a `docker save` archive and imports it.
func importImage(t testing.TB, s *ocisandbox.Sandbox, img v1.Image) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.tar")
	if err := testimage.WriteArchive(path, "sandboxtest/agent:latest", img); err != nil {
		t.Fatal(err)
	}
	ids, err := s.ImportArchive(context.Background(), path)
	if err != nil {
		t.Fatalf("ImportArchive: %v", err)
	}
	if len(ids) != 1 {
		t.Fatalf("ImportArchive = %v, want one image", ids)
	}
	return ids[0]
}

// traversableDir returns a new directory that a user namespace's root can
// traverse (t.TempDir's parent is private to host root).
func traversableDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ocisandbox-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s (a leftover mount?): %v", dir, err)
		}
	})
	return dir
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type harness struct{ s *ocisandbox.Sandbox }

func (h *harness) Sandbox() sandbox.Sandbox { return h.s }
func (h *harness) Live() []string           { return h.s.Live() }
func (h *harness) Close()                   {}

func (h *harness) Image(t *testing.T, p sandboxtest.Program) string {
	return importProgram(t, h.s, p)
}

func runtimeHarness(runtime string) func(t *testing.T) sandboxtest.Harness {
	return func(t *testing.T) sandboxtest.Harness {
		return &harness{s: newSandbox(t, runtime, nil)}
	}
}

// awaitBeats waits up to 30s for the n-th heartbeat of marker.
func awaitBeats(t testing.TB, gw *sandboxtest.Gateway, marker string, n int, inst sandbox.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if gw.WaitBeats(ctx, marker, n) != nil {
		var logs sandbox.Logs
		if inst != nil {
			logs = inst.Logs()
		}
		t.Fatalf("heartbeat %d of %q never came (stdout %q, stderr %q)", n, marker, logs.Stdout, logs.Stderr)
	}
}

// assertQuiet fails if marker beats again (beyond one request in flight)
// within 300ms: its process should be dead.
func assertQuiet(t testing.TB, gw *sandboxtest.Gateway, marker string) {
	t.Helper()
	before := gw.Beats(marker)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if gw.WaitBeats(ctx, marker, before+2) == nil {
		t.Errorf("heartbeats %q go on after teardown: a process of the run survived", marker)
	}
}

// runToEnd starts spec, waits for the end and destroys the instance.
func runToEnd(t testing.TB, s sandbox.Sandbox, spec sandbox.Spec) (sandbox.Exit, sandbox.Logs) {
	t.Helper()
	inst, err := s.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exit, err := inst.Wait(ctx)
	if derr := inst.Destroy(context.Background()); derr != nil {
		t.Errorf("Destroy: %v", derr)
	}
	if err != nil {
		t.Fatalf("Wait: %v (logs %+v)", err, inst.Logs())
	}
	return exit, inst.Logs()
}
