package ocisandbox_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestCrun runs the conformance suite and the attack battery with crun
// where crun can run containers. On hosts where crun refuses (crun 1.8 on
// hybrid cgroup v1/v2, as on the CI machine), it asserts instead that Start
// reports the refusal as ErrRuntimeUnsupported with crun's own message and
// the advice to use runc; that path is not a skip.
func TestCrun(t *testing.T) {
	refusal := crunPreflight(t)
	if refusal == "" {
		t.Run("Conformance", func(t *testing.T) { sandboxtest.RunConformanceTests(t, runtimeHarness("crun")) })
		t.Run("Attacks", func(t *testing.T) { runAttackBattery(t, "crun") })
		return
	}
	if !strings.Contains(refusal, "hybrid") {
		t.Fatalf("crun cannot run a trivial container on this host, for a reason other than hybrid cgroups: %s", refusal)
	}
	t.Logf("crun refuses this host (%s); checking that ocisandbox reports it", refusal)
	s := newSandbox(t, "crun", nil)
	gw := sandboxtest.NewGateway(t)
	img := importProgram(t, s, sandboxtest.Program{{Op: "print", Text: "never\n"}})
	inst, err := s.Start(t.Context(), gw.Spec("crun", img))
	if err == nil {
		inst.Destroy(t.Context())
		t.Fatal("Start with crun succeeded although crun refused a trivial container")
	}
	if !errors.Is(err, ocisandbox.ErrRuntimeUnsupported) || !strings.Contains(err.Error(), "hybrid mode not supported") || !strings.Contains(err.Error(), "use runc") {
		t.Errorf("Start = %v; want ErrRuntimeUnsupported with crun's message and the advice to use runc", err)
	}
	if live := s.Live(); len(live) != 0 {
		t.Errorf("Live() = %v after a failed Start", live)
	}
	if procs := processesOf(s.HostID()); len(procs) != 0 {
		t.Errorf("processes %v left by a failed Start", procs)
	}
}

// crunPreflight runs a trivial container with crun directly and returns
// crun's error message, or "" if it ran.
func crunPreflight(t *testing.T) string {
	t.Helper()
	crun, err := exec.LookPath("crun")
	if err != nil {
		t.Fatalf("crun is needed (apt-get install crun): %v", err)
	}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(crun, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("crun spec: %v: %s", err, out)
	}
	var spec specs.Spec
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil {
		t.Fatal(err)
	}
	// The agent with an empty program exits 0 at once.
	bin := agentBinary(t)
	if err := os.Link(bin, filepath.Join(bundle, "rootfs", "agent")); err != nil {
		t.Fatal(err)
	}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"/agent"}
	spec.Process.Env = []string{sandboxtest.ProgramEnv + "=[]"}
	if b, err = json.Marshal(spec); err == nil {
		err = os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), crun, "--root", filepath.Join(dir, "state"), "run", "--bundle", bundle, "ocisandbox-preflight")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		_ = exec.Command(crun, "--root", filepath.Join(dir, "state"), "delete", "--force", "ocisandbox-preflight").Run()
		return strings.TrimSpace(stderr.String()) + " (" + err.Error() + ")"
	}
	return ""
}
