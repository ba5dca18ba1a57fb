package sandboxtest_test

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

// TestAgentBinary builds the agent as container drivers will (static, no
// cgo) and runs a program with it on the real OS.
func TestAgentBinary(t *testing.T) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the agent: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "agent")
	build := exec.CommandContext(t.Context(), gotool, "build", "-o", bin, "./agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./agent: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("agent binary has a dynamic loader; container images without libc cannot run it")
		}
	}

	file := filepath.Join(t.TempDir(), "f")
	prog, err := json.Marshal(sandboxtest.Program{
		{Op: "env", Key: "SANDBOXTEST_X"},
		{Op: "read_file", Path: file},
		{Op: "write_file", Path: file, Data: "data"},
		{Op: "read_file", Path: file},
		{Op: "print", Stream: "stderr", Text: "to stderr\n"},
		{Op: "exit", Code: 7},
		{Op: "print", Text: "never\n"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), bin)
	cmd.Env = []string{sandboxtest.ProgramEnv + "=" + string(prog), "SANDBOXTEST_X=1"}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var exitErr *exec.ExitError
	if err := cmd.Run(); !errors.As(err, &exitErr) || exitErr.ExitCode() != 7 {
		t.Errorf("agent = %v, want exit status 7", err)
	}
	want := "env SANDBOXTEST_X=1\nabsent " + file + "\npresent " + file + " data\n"
	if diff := cmp.Diff(want, stdout.String()); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff("to stderr\n", stderr.String()); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}
