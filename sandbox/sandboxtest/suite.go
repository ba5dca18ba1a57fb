// Package sandboxtest is the conformance suite that every sandbox driver
// (memsandbox, ocisandbox, cfsandbox) runs unchanged, so that promises P1, P2,
// P3, P13 and P14 of DESIGN.md mean the same thing whatever the backend.
//
// Agent behaviours are small [Program]s that an interpreter ([Run]) executes
// inside the sandbox: memsandbox runs it as a Go function on an in-memory
// [System]; container drivers run the sandboxtest/agent binary, which reads
// its program from [ProgramEnv] and uses [OSSystem]. A driver's test supplies
// a [Harness] and calls [RunConformanceTests].
//
// The suite starts its own MCP server on a loopback address and never sends
// traffic anywhere else: the forbidden destinations it tries (public, private,
// metadata and IPv6 addresses, DNS) must be refused by the driver before any
// packet leaves.
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/google/go-cmp/cmp"
)

// A Harness adapts a driver to the suite. Live must be safe for concurrent
// use; the other methods are called from test goroutines only.
type Harness interface {
	// Sandbox returns the driver under test.
	Sandbox() sandbox.Sandbox
	// Image returns the image reference under which the driver runs the
	// interpreter with program p.
	Image(t *testing.T, p Program) string
	// Live reports the ids of instances that still hold resources (not yet
	// destroyed).
	Live() []string
	// Close releases the harness; it is called once, after every test.
	Close()
}

const (
	// quietWindow is how long the suite listens for heartbeats after an
	// instance was killed: fifteen heartbeat intervals.
	quietWindow = 15 * heartbeatInterval
	// waitLimit bounds each wait for something the agent must do.
	waitLimit = 30 * time.Second
)

// RunConformanceTests runs the suite against the driver that newHarness
// adapts. newHarness is called once.
func RunConformanceTests(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	h := newHarness(t)
	defer h.Close()
	s := &suite{h: h, sb: h.Sandbox(), f: newFixture(t)}
	tests := []struct {
		name string
		fn   func(*testing.T, *suite)
	}{
		{"MCPCall", testMCPCall},
		{"Egress", testEgress},
		{"Env", testEnv},
		{"NothingPersists", testNothingPersists},
		{"Logs", testLogs},
		{"ExitCode", testExitCode},
		{"Timeout", testTimeout},
		{"DestroyStopsChildren", testDestroyStopsChildren},
		{"WaitCancelled", testWaitCancelled},
		{"InvalidSpec", testInvalidSpec},
		{"UnknownImage", testUnknownImage},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s) })
	}
	if live := h.Live(); len(live) != 0 {
		t.Errorf("Live() = %v after every instance was destroyed, want none", live)
	}
}

type suite struct {
	h  Harness
	sb sandbox.Sandbox
	f  *fixture
	n  atomic.Int64
}

// spec returns a valid Spec for image with a fresh RunID, the suite's MCP
// server and its token, and a one-minute deadline so that a broken driver
// cannot hang the suite.
func (s *suite) spec(image string) sandbox.Spec {
	return s.f.Spec(fmt.Sprintf("sandboxtest-%d", s.n.Add(1)), image)
}

// marker returns a string unique within the suite, for heartbeats and tool
// calls.
func (s *suite) marker() string { return fmt.Sprintf("marker-%d", s.n.Add(1)) }

// start starts spec and destroys the instance when the test ends.
func (s *suite) start(t *testing.T, spec sandbox.Spec) sandbox.Instance {
	t.Helper()
	inst, err := s.sb.Start(t.Context(), spec)
	if err != nil {
		t.Fatalf("Start(%s) = %v", spec.Image, err)
	}
	t.Cleanup(func() { _ = inst.Destroy(context.Background()) })
	return inst
}

type result struct {
	id   string
	exit sandbox.Exit
	logs sandbox.Logs
}

// exec runs spec to its end, destroys the instance and checks that Destroy
// is idempotent and that Live forgets it. It returns errors rather than
// failing the test so that goroutines can call it.
func (s *suite) exec(ctx context.Context, spec sandbox.Spec) (result, error) {
	inst, err := s.sb.Start(ctx, spec)
	if err != nil {
		return result{}, fmt.Errorf("start: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, waitLimit)
	exit, werr := inst.Wait(wctx)
	cancel()
	derr := inst.Destroy(ctx)
	r := result{id: inst.ID(), exit: exit, logs: inst.Logs()}
	switch {
	case werr != nil:
		return r, fmt.Errorf("wait: %w (stderr %q)", werr, r.logs.Stderr)
	case derr != nil:
		return r, fmt.Errorf("destroy: %w", derr)
	}
	if err := inst.Destroy(ctx); err != nil {
		return r, fmt.Errorf("second Destroy = %v, want nil: Destroy is idempotent", err)
	}
	if slices.Contains(s.h.Live(), r.id) {
		return r, fmt.Errorf("Live() lists %s after Destroy", r.id)
	}
	return r, nil
}

// run runs program p with spec edited by edit (if not nil).
func (s *suite) run(t *testing.T, p Program, edit func(*sandbox.Spec)) result {
	t.Helper()
	spec := s.spec(s.h.Image(t, p))
	if edit != nil {
		edit(&spec)
	}
	r, err := s.exec(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// destroy destroys inst (with an already cancelled ctx, which Destroy must
// tolerate) and checks that Live forgets it.
func (s *suite) destroy(t *testing.T, inst sandbox.Instance) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := inst.Destroy(ctx); err != nil {
		t.Fatalf("Destroy with a done ctx = %v, want nil", err)
	}
	if err := inst.Destroy(ctx); err != nil {
		t.Errorf("second Destroy = %v, want nil: Destroy is idempotent", err)
	}
	if slices.Contains(s.h.Live(), inst.ID()) {
		t.Errorf("Live() lists %s after Destroy", inst.ID())
	}
}

// wait waits for inst to end, for at most waitLimit.
func (s *suite) wait(t *testing.T, inst sandbox.Instance) (sandbox.Exit, error) {
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	return inst.Wait(ctx)
}

// awaitBeats waits for the n-th heartbeat with marker.
func (s *suite) awaitBeats(t *testing.T, inst sandbox.Instance, marker string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	if err := s.f.WaitBeats(ctx, marker, n); err != nil {
		t.Fatalf("heartbeat %d of %q never arrived: %v (stderr %q)", n, marker, err, inst.Logs().Stderr)
	}
}

// assertQuiet fails if heartbeats with marker go on after their process
// should have been killed. One request per beating process may have been in
// flight at that moment and is allowed to land.
func (s *suite) assertQuiet(t *testing.T, marker string, inFlight int) {
	t.Helper()
	before := s.f.Beats(marker)
	ctx, cancel := context.WithTimeout(t.Context(), quietWindow)
	defer cancel()
	if s.f.WaitBeats(ctx, marker, before+inFlight+1) == nil {
		t.Errorf("heartbeats %q go on after the instance was killed: its processes still run", marker)
	}
}

func lines(b []byte) []string { return strings.SplitAfter(string(b), "\n") }

func testMCPCall(t *testing.T, s *suite) {
	text := "hello " + s.marker()
	r := s.run(t, Program{{Op: "mcp_call", Tool: "echo", Args: map[string]any{"text": text}}}, nil)
	if r.exit.Code != 0 || string(r.logs.Stdout) != "result "+text+"\n" {
		t.Fatalf("agent exited %d with stdout %q, stderr %q; want 0 and the echoed text", r.exit.Code, r.logs.Stdout, r.logs.Stderr)
	}
	if !s.f.SawCall(text) {
		t.Errorf("MCP server never saw the call echo(%q)", text)
	}
}

func testEgress(t *testing.T, s *suite) {
	rows := []struct {
		step Step
		want string
	}{
		{Step{Op: "dial"}, "REACHED tcp mcp"},
		{Step{Op: "http_get", URL: "/"}, "REACHED http /"},
		{Step{Op: "dial", Network: "udp", Addr: "1.1.1.1:53"}, "blocked udp 1.1.1.1:53"},
		{Step{Op: "dial", Addr: "1.1.1.1:80"}, "blocked tcp 1.1.1.1:80"},
		{Step{Op: "dial", Addr: "10.0.0.1:80"}, "blocked tcp 10.0.0.1:80"},
		{Step{Op: "dial", Network: "udp", Addr: "10.0.0.1:53"}, "blocked udp 10.0.0.1:53"},
		{Step{Op: "dial", Addr: "169.254.169.254:80"}, "blocked tcp 169.254.169.254:80"},
		{Step{Op: "dial", Addr: "[2606:4700:4700::1111]:80"}, "blocked tcp [2606:4700:4700::1111]:80"},
		{Step{Op: "dial", Addr: s.f.host6Addr}, "blocked tcp " + s.f.host6Addr},
		{Step{Op: "dial", Addr: s.f.hostAddr}, "blocked tcp " + s.f.hostAddr},
		{Step{Op: "http_get", URL: "http://" + s.f.hostAddr + "/"}, "blocked http http://" + s.f.hostAddr + "/"},
		{Step{Op: "http_get", URL: "/redirect"}, "blocked http /redirect"},
		{Step{Op: "lookup", Host: "example.com"}, "blocked lookup example.com"},
	}
	var p Program
	var want []string
	for _, row := range rows {
		p = append(p, row.step)
		want = append(want, row.want+"\n")
	}
	r := s.run(t, p, nil)
	if diff := cmp.Diff(append(want, ""), lines(r.logs.Stdout)); diff != "" {
		t.Errorf("egress (-want +got):\n%s\nstderr:\n%s", diff, r.logs.Stderr)
	}
}

func testEnv(t *testing.T, s *suite) {
	const key, value = "SANDBOXTEST_VALUE", "a b=c\td"
	r := s.run(t, Program{
		{Op: "env", Key: sandbox.EnvMCPToken},
		{Op: "env", Key: key},
		{Op: "env", Key: sandbox.EnvMCPURL},
	}, func(spec *sandbox.Spec) { spec.Env[key] = value })
	got := lines(r.logs.Stdout)
	want := []string{"env " + sandbox.EnvMCPToken + "=" + s.f.Token() + "\n", "env " + key + "=" + value + "\n"}
	if len(got) < 3 || !cmp.Equal(want, got[:2]) || !strings.HasPrefix(got[2], "env "+sandbox.EnvMCPURL+"=http") {
		t.Errorf("agent's environment printed %q; want the token, %s=%q and an http(s) %s set by the driver",
			got, key, value, sandbox.EnvMCPURL)
	}
}

func testNothingPersists(t *testing.T, s *suite) {
	const key, path = "SANDBOXTEST_SECRET", "/tmp/sandboxtest-persist"
	img := s.h.Image(t, Program{
		{Op: "env", Key: key},
		{Op: "read_file", Path: path},
		{Op: "write_file", Path: path, Data: "left-behind"},
		{Op: "read_file", Path: path},
	})
	for i, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{key: "first-run"}, "env " + key + "=first-run\n"},
		{nil, "env " + key + " unset\n"},
	} {
		spec := s.spec(img)
		for k, v := range tc.env {
			spec.Env[k] = v
		}
		r, err := s.exec(t.Context(), spec)
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		want := tc.want + "absent " + path + "\npresent " + path + " left-behind\n"
		if diff := cmp.Diff(want, string(r.logs.Stdout)); diff != "" {
			t.Errorf("run %d (-want +got):\n%s\nstderr: %s", i+1, diff, r.logs.Stderr)
		}
	}
}

func testLogs(t *testing.T, s *suite) {
	const limit = 1024
	long := strings.Repeat("0123456789abcdef", 3*limit/16)
	for _, tc := range []struct {
		name, stdout, stderr string
		want                 sandbox.Logs
	}{
		{"within limit", "out\n", "err\n", sandbox.Logs{Stdout: []byte("out\n"), Stderr: []byte("err\n")}},
		{"stdout over", long, "err\n", sandbox.Logs{Stdout: []byte(long[:limit]), Stderr: []byte("err\n"), Truncated: true}},
		{"stderr over", "out\n", long, sandbox.Logs{Stdout: []byte("out\n"), Stderr: []byte(long[:limit]), Truncated: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.run(t, Program{
				{Op: "print", Stream: "stdout", Text: tc.stdout},
				{Op: "print", Stream: "stderr", Text: tc.stderr},
			}, func(spec *sandbox.Spec) { spec.Limits.LogBytes = limit })
			if diff := cmp.Diff(tc.want, r.logs); diff != "" {
				t.Errorf("Logs() after Destroy (-want +got):\n%s", diff)
			}
		})
	}
}

func testExitCode(t *testing.T, s *suite) {
	for _, tc := range []struct {
		name      string
		p         Program
		code      int
		stderrHas string
	}{
		{"zero", Program{{Op: "print", Text: "done\n"}}, 0, ""},
		{"three", Program{{Op: "exit", Code: 3}}, 3, ""},
		{"forty-two", Program{{Op: "exit", Code: 42}}, 42, ""},
		{"panic", Program{{Op: "panic", Text: "sandboxtest boom"}}, 2, "panic: sandboxtest boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.run(t, tc.p, nil)
			if r.exit.Code != tc.code || r.exit.TimedOut {
				t.Errorf("Wait = %+v, want code %d, not timed out", r.exit, tc.code)
			}
			if !strings.Contains(string(r.logs.Stderr), tc.stderrHas) {
				t.Errorf("stderr %q does not contain %q", r.logs.Stderr, tc.stderrHas)
			}
		})
	}
}

func testTimeout(t *testing.T, s *suite) {
	parent, child := s.marker(), s.marker()
	spec := s.spec(s.h.Image(t, Program{{Op: "spawn", Text: child}, {Op: "heartbeat", Text: parent}}))
	// Long enough for the processes to start and beat at least once.
	spec.Limits.Timeout = 2 * time.Second
	inst := s.start(t, spec)
	s.awaitBeats(t, inst, parent, 1)
	s.awaitBeats(t, inst, child, 1)
	exit, err := s.wait(t, inst)
	if err != nil || exit.Code != -1 || !exit.TimedOut {
		t.Fatalf("Wait = %+v, %v; want code -1, timed out", exit, err)
	}
	s.assertQuiet(t, parent, 1)
	s.assertQuiet(t, child, 1)
	if again, err := s.wait(t, inst); err != nil || again != exit {
		t.Errorf("second Wait = %+v, %v; want %+v", again, err, exit)
	}
	s.destroy(t, inst)
}

func testDestroyStopsChildren(t *testing.T, s *suite) {
	child := s.marker()
	// The parent exits once its child has beaten; whether the child then
	// outlives it depends on the driver, but Destroy must stop it.
	inst := s.start(t, s.spec(s.h.Image(t, Program{
		{Op: "spawn", Text: child},
		{Op: "mcp_call", Tool: "await_heartbeat", Args: map[string]any{"marker": child}},
		{Op: "exit", Code: 0},
	})))
	exit, err := s.wait(t, inst)
	if err != nil || exit.Code != 0 {
		t.Fatalf("Wait = %+v, %v; want code 0 (stderr %q)", exit, err, inst.Logs().Stderr)
	}
	s.destroy(t, inst)
	s.assertQuiet(t, child, 1)
}

func testWaitCancelled(t *testing.T, s *suite) {
	m := s.marker()
	inst := s.start(t, s.spec(s.h.Image(t, Program{{Op: "heartbeat", Text: m}})))
	s.awaitBeats(t, inst, m, 1)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if exit, err := inst.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait(cancelled ctx) = %+v, %v; want context.Canceled", exit, err)
	}
	// The instance runs on until Destroy.
	s.awaitBeats(t, inst, m, s.f.Beats(m)+1)
	s.destroy(t, inst)
	s.assertQuiet(t, m, 1)
}

func testInvalidSpec(t *testing.T, s *suite) {
	img := s.h.Image(t, Program{})
	live := s.h.Live()
	for _, tc := range []struct {
		name string
		edit func(*sandbox.Spec)
	}{
		{"empty RunID", func(sp *sandbox.Spec) { sp.RunID = "" }},
		{"empty Image", func(sp *sandbox.Spec) { sp.Image = "" }},
		{"empty MCPURL", func(sp *sandbox.Spec) { sp.MCPURL = "" }},
		{"MCPURL not http", func(sp *sandbox.Spec) { sp.MCPURL = "ftp://127.0.0.1/mcp" }},
		{"MCPURL relative", func(sp *sandbox.Spec) { sp.MCPURL = "/mcp" }},
		{"env name empty", func(sp *sandbox.Spec) { sp.Env[""] = "x" }},
		{"env name with =", func(sp *sandbox.Spec) { sp.Env["A=B"] = "x" }},
		{"env sets MCP URL", func(sp *sandbox.Spec) { sp.Env[sandbox.EnvMCPURL] = "http://10.0.0.1/" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := s.spec(img)
			tc.edit(&spec)
			inst, err := s.sb.Start(t.Context(), spec)
			if err == nil {
				_ = inst.Destroy(context.Background())
			}
			if !errors.Is(err, sandbox.ErrInvalidSpec) {
				t.Errorf("Start = %v, want sandbox.ErrInvalidSpec", err)
			}
			if diff := cmp.Diff(live, s.h.Live()); diff != "" {
				t.Errorf("Live() changed by a failed Start (-before +after):\n%s", diff)
			}
		})
	}
}

func testUnknownImage(t *testing.T, s *suite) {
	// A well-formed digest that no driver has.
	spec := s.spec("sha256:" + strings.Repeat("0", 64))
	live := s.h.Live()
	inst, err := s.sb.Start(t.Context(), spec)
	if err == nil {
		_ = inst.Destroy(context.Background())
	}
	if !errors.Is(err, sandbox.ErrImageNotFound) {
		t.Errorf("Start = %v, want sandbox.ErrImageNotFound", err)
	}
	if diff := cmp.Diff(live, s.h.Live()); diff != "" {
		t.Errorf("Live() changed by a failed Start (-before +after):\n%s", diff)
	}
}

func testConcurrent(t *testing.T, s *suite) {
	const n, key, path = 20, "SANDBOXTEST_ID", "/tmp/sandboxtest-concurrent"
	img := s.h.Image(t, Program{
		{Op: "env", Key: key},
		{Op: "read_file", Path: path},
		{Op: "write_file", Path: path, Data: "mine"},
		{Op: "dial"},
		{Op: "read_file", Path: path},
	})
	results := make([]result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			spec := s.spec(img)
			spec.Env[key] = fmt.Sprint(i)
			results[i], errs[i] = s.exec(t.Context(), spec)
		})
	}
	wg.Wait()
	ids := map[string]int{}
	for i, r := range results {
		if errs[i] != nil {
			t.Errorf("run %d: %v", i, errs[i])
			continue
		}
		want := fmt.Sprintf("env %s=%d\nabsent %s\nREACHED tcp mcp\npresent %s mine\n", key, i, path, path)
		if diff := cmp.Diff(want, string(r.logs.Stdout)); diff != "" || r.exit.Code != 0 {
			t.Errorf("run %d exited %d (-want +got):\n%s\nstderr: %s", i, r.exit.Code, diff, r.logs.Stderr)
		}
		if j, dup := ids[r.id]; dup {
			t.Errorf("runs %d and %d share instance id %q", j, i, r.id)
		}
		ids[r.id] = i
	}
}
