package sandboxtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

// TestAttemptsOnHost runs attack steps with the real agent on the host,
// outside any sandbox, where they must get through: so "blocked" from a
// sandbox means the sandbox stopped them. It needs root, as CI has.
func TestAttemptsOnHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CI runs as root): the attempts are privileged")
	}
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent")
	build := exec.CommandContext(t.Context(), gotool, "build", "-o", bin, "./agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	p := sandboxtest.Program{
		{Op: "attempt", Text: "raw_socket"},
		{Op: "attempt", Text: "packet_socket"},
		{Op: "attempt", Text: "ptrace"},
		{Op: "attempt", Text: "mount", Path: mnt},
		{Op: "attempt", Text: "chroot", Path: mnt},
		{Op: "attempt", Text: "mknod", Path: filepath.Join(dir, "disk")},
		{Op: "attempt", Text: "write", Path: filepath.Join(dir, "w"), Data: "x"},
		{Op: "attempt", Text: "write", Path: filepath.Join(dir, "missing", "w")},
		{Op: "attempt", Text: "fill", Path: filepath.Join(dir, "fill"), Code: 2},
		{Op: "attempt", Text: "signal", Code: os.Getpid()},
		{Op: "attempt", Text: "no-such-attempt"},
	}
	prog, _ := json.Marshal(p)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin)
	cmd.Env = []string{sandboxtest.ProgramEnv + "=" + string(prog)}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("agent: %v (stderr %s)", err, stderr.String())
	}
	want := "REACHED attempt raw_socket\nREACHED attempt packet_socket\nREACHED attempt ptrace\n" +
		"REACHED attempt mount " + mnt + "\nREACHED attempt chroot " + mnt + "\n" +
		"REACHED attempt mknod " + filepath.Join(dir, "disk") + "\n" +
		"REACHED attempt write " + filepath.Join(dir, "w") + "\n" +
		"blocked attempt write " + filepath.Join(dir, "missing", "w") + "\n" +
		"REACHED attempt fill " + filepath.Join(dir, "fill") + " 2\n" +
		"REACHED attempt signal " + itoa(os.Getpid()) + "\n" +
		"blocked attempt no-such-attempt\n"
	if diff := cmp.Diff(want, stdout.String()); diff != "" {
		t.Errorf("attempts on the host (-want +got):\n%s\nstderr:\n%s", diff, stderr.String())
	}
}

// TestAttemptsWithoutAttempter checks that a System that is no Attempter
// blocks every attempt, and that a fork bomb stops when Spawn fails.
func TestAttemptsWithoutAttempter(t *testing.T) {
	var out bytes.Buffer
	sys := &fakeSystem{out: &out, spawnLimit: 3}
	code := sandboxtest.Run(context.Background(), sys, sandboxtest.Program{
		{Op: "attempt", Text: "raw_socket"},
		{Op: "fork_bomb", Text: "m"},
		{Op: "double_fork", Text: "d"},
	})
	want := "blocked attempt raw_socket\nblocked fork_bomb\n"
	if code != 1 || out.String() != want {
		t.Errorf("Run = %d, stdout %q; want 1 (double_fork cannot spawn) and %q", code, out.String(), want)
	}
	if sys.spawned != 3 {
		t.Errorf("fork bomb spawned %d, want 3 (the limit)", sys.spawned)
	}
}

type fakeSystem struct {
	out        io.Writer
	spawnLimit int
	spawned    int
}

func (f *fakeSystem) LookupEnv(string) (string, bool) { return "", false }
func (f *fakeSystem) HTTPClient() *http.Client        { return http.DefaultClient }
func (f *fakeSystem) WriteFile(string, []byte) error  { return os.ErrPermission }
func (f *fakeSystem) ReadFile(string) ([]byte, error) { return nil, os.ErrNotExist }
func (f *fakeSystem) Stdout() io.Writer               { return f.out }
func (f *fakeSystem) Stderr() io.Writer               { return io.Discard }
func (f *fakeSystem) LookupHost(context.Context, string) ([]string, error) {
	return nil, os.ErrPermission
}
func (f *fakeSystem) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, os.ErrPermission
}
func (f *fakeSystem) Spawn(sandboxtest.Program) error {
	if f.spawned >= f.spawnLimit {
		return os.ErrPermission
	}
	f.spawned++
	return nil
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
