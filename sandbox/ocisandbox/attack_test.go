package ocisandbox_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

func TestAttacks(t *testing.T) { runAttackBattery(t, "runc") }

// runAttackBattery runs the attack programs on runtime. Every network
// target is either on this host's loopback (services the test starts) or
// has no route inside the run's namespace: nothing is sent off the machine.
func runAttackBattery(t *testing.T, runtime string) {
	s := newSandbox(t, runtime, &ocisandbox.Options{LayerBytes: 8 << 20})
	gw := sandboxtest.NewGateway(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *ocisandbox.Sandbox, *sandboxtest.Gateway)
	}{
		{"Network", attackNetwork},
		{"OtherRunRelay", attackOtherRun},
		{"HostFilesAndEnv", attackHostFiles},
		{"Privileged", attackPrivileged},
		{"SurviveTeardown", attackSurvive},
		{"SecondRunSeesNothing", attackSecondRun},
		{"Compat32ABI", attackCompat32},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, s, gw) })
	}
	if live := s.Live(); len(live) != 0 {
		t.Errorf("Live() = %v after every run, want none", live)
	}
}

// hostListener accepts TCP connections on addr and counts them.
func hostListener(t *testing.T, network, addr string) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), &n
}

// hostAddrs returns this host's non-loopback IPv4 addresses.
func hostAddrs(t *testing.T) []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			out = append(out, ipn.IP.String())
		}
	}
	return out
}

// expectLines runs steps and checks each printed exactly want.
func expectLines(t *testing.T, s sandbox.Sandbox, gw *sandboxtest.Gateway, image string, want []string) sandbox.Logs {
	t.Helper()
	exit, logs := runToEnd(t, s, gw.Spec(t.Name(), image))
	got := strings.Split(strings.TrimSuffix(string(logs.Stdout), "\n"), "\n")
	if diff := cmp.Diff(want, got); diff != "" || exit.Code != 0 {
		t.Errorf("exit %+v; stdout (-want +got):\n%s\nstderr:\n%s", exit, diff, logs.Stderr)
	}
	return logs
}

func attackNetwork(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	loop4, n4 := hostListener(t, "tcp4", "127.0.0.1:0")
	any4, nAny := hostListener(t, "tcp4", "0.0.0.0:0")
	_, anyPort, _ := net.SplitHostPort(any4)
	gwHost := must(url.Parse(gw.URL())).Host
	type row struct {
		step sandboxtest.Step
		want string
	}
	rows := []row{
		{sandboxtest.Step{Op: "mcp_call", Tool: "echo", Args: map[string]any{"text": "through the relay"}}, "result through the relay"},
		{sandboxtest.Step{Op: "dial", Addr: loop4}, "blocked tcp " + loop4},
		{sandboxtest.Step{Op: "dial", Addr: gwHost}, "blocked tcp " + gwHost},
		{sandboxtest.Step{Op: "dial", Addr: "127.0.0.1:" + anyPort}, "blocked tcp 127.0.0.1:" + anyPort},
		{sandboxtest.Step{Op: "dial", Addr: "1.1.1.1:443"}, "blocked tcp 1.1.1.1:443"},
		{sandboxtest.Step{Op: "dial", Network: "udp", Addr: "8.8.8.8:53"}, "blocked udp 8.8.8.8:53"},
		{sandboxtest.Step{Op: "dial", Addr: "192.168.1.1:80"}, "blocked tcp 192.168.1.1:80"},
		{sandboxtest.Step{Op: "dial", Network: "udp", Addr: "172.16.0.1:53"}, "blocked udp 172.16.0.1:53"},
		{sandboxtest.Step{Op: "dial", Addr: "169.254.169.254:80"}, "blocked tcp 169.254.169.254:80"},
		{sandboxtest.Step{Op: "dial", Network: "udp", Addr: "169.254.169.254:80"}, "blocked udp 169.254.169.254:80"},
		{sandboxtest.Step{Op: "dial", Addr: "[2606:4700:4700::1111]:443"}, "blocked tcp [2606:4700:4700::1111]:443"},
		{sandboxtest.Step{Op: "dial", Network: "udp", Addr: "[2001:4860:4860::8888]:53"}, "blocked udp [2001:4860:4860::8888]:53"},
		{sandboxtest.Step{Op: "dial", Addr: "[fd00::1]:80"}, "blocked tcp [fd00::1]:80"},
		{sandboxtest.Step{Op: "dial", Addr: "[::1]:" + anyPort}, "blocked tcp [::1]:" + anyPort},
		{sandboxtest.Step{Op: "lookup", Host: "example.com"}, "blocked lookup example.com"},
		{sandboxtest.Step{Op: "lookup", Host: "metadata.google.internal"}, "blocked lookup metadata.google.internal"},
		{sandboxtest.Step{Op: "dial", Network: "unix", Addr: "/var/run/docker.sock"}, "blocked unix /var/run/docker.sock"},
		{sandboxtest.Step{Op: "dial", Network: "unix", Addr: "/run/containerd/containerd.sock"}, "blocked unix /run/containerd/containerd.sock"},
	}
	for _, ip := range hostAddrs(t) {
		addr := net.JoinHostPort(ip, anyPort)
		rows = append(rows,
			row{sandboxtest.Step{Op: "dial", Addr: addr}, "blocked tcp " + addr},
			row{sandboxtest.Step{Op: "dial", Network: "udp", Addr: net.JoinHostPort(ip, "53")}, "blocked udp " + net.JoinHostPort(ip, "53")})
	}
	var p sandboxtest.Program
	var want []string
	for _, r := range rows {
		p = append(p, r.step)
		want = append(want, r.want)
	}
	expectLines(t, s, gw, importProgram(t, s, p), want)
	if n4.Load() != 0 || nAny.Load() != 0 {
		t.Errorf("host services got %d and %d connections from the sandbox, want none", n4.Load(), nAny.Load())
	}
}

func attackOtherRun(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	marker := "other-run-" + t.Name()
	a, err := s.Start(t.Context(), gw.Spec("victim", importProgram(t, s, sandboxtest.Program{
		{Op: "env", Key: sandbox.EnvMCPURL},
		{Op: "heartbeat", Text: marker},
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Destroy(context.Background())
	awaitBeats(t, gw, marker, 1, a)
	victimURL := must(url.Parse(strings.TrimSpace(strings.TrimPrefix(string(a.Logs().Stdout), "env "+sandbox.EnvMCPURL+"="))))
	victim := victimURL.Host
	img := importProgram(t, s, sandboxtest.Program{
		{Op: "env", Key: sandbox.EnvMCPURL},
		{Op: "dial", Addr: victim},
		{Op: "http_get", URL: "http://" + victim + "/"},
	})
	for try := 0; ; try++ {
		_, logs := runToEnd(t, s, gw.Spec("attacker", img))
		lines := strings.Split(string(logs.Stdout), "\n")
		own := must(url.Parse(strings.TrimPrefix(lines[0], "env "+sandbox.EnvMCPURL+"="))).Host
		if own == victim && try < 3 {
			// Each run's loopback is its own: the same port number there is
			// the attacker's own relay, which proves nothing. Try again.
			continue
		}
		want := []string{"blocked tcp " + victim, "blocked http http://" + victim + "/", ""}
		if diff := cmp.Diff(want, lines[1:]); diff != "" {
			t.Errorf("attacker reached the victim's relay at %s (-want +got):\n%s", victim, diff)
		}
		return
	}
}

func attackHostFiles(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	const secretKey = "OCISANDBOX_HOST_SECRET"
	t.Setenv(secretKey, "host-only-value")
	secretFile := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(secretFile, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostPid := os.Getpid()
	p := sandboxtest.Program{
		{Op: "env", Key: secretKey},
		{Op: "read_file", Path: secretFile},
		{Op: "read_file", Path: "/etc/shadow"},
		{Op: "read_file", Path: "/var/run/docker.sock"},
		{Op: "read_file", Path: fmt.Sprintf("/proc/%d/environ", hostPid)},
		{Op: "read_file", Path: "/sys/kernel/notes"},
		{Op: "attempt", Text: "signal", Code: hostPid},
		{Op: "attempt", Text: "ptrace", Code: hostPid},
	}
	want := []string{
		"env " + secretKey + " unset",
		"absent " + secretFile,
		"absent /etc/shadow",
		"absent /var/run/docker.sock",
		fmt.Sprintf("absent /proc/%d/environ", hostPid),
		"absent /sys/kernel/notes",
		fmt.Sprintf("blocked attempt signal %d", hostPid),
		fmt.Sprintf("blocked attempt ptrace %d", hostPid),
	}
	expectLines(t, s, gw, importProgram(t, s, p), want)
}

func attackPrivileged(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	var p sandboxtest.Program
	p = append(p, sandboxtest.AttackRawSocket...)
	p = append(p, sandboxtest.AttackPrivileged...)
	p = append(p, sandboxtest.AttackKernelFiles...)
	p = append(p,
		// The writable layer is a tmpfs of Options.LayerBytes (8 MiB here):
		// filling the host's disk from it is impossible.
		sandboxtest.Step{Op: "attempt", Text: "fill", Path: "/big", Code: 64},
		// Writing over an image file changes only this run's layer.
		sandboxtest.Step{Op: "read_file", Path: "/etc/image-file"},
		sandboxtest.Step{Op: "attempt", Text: "write", Path: "/etc/image-file", Data: "overwritten"},
		sandboxtest.Step{Op: "read_file", Path: "/etc/image-file"},
	)
	want := []string{
		"blocked attempt raw_socket",
		"blocked attempt packet_socket",
		"blocked attempt ptrace",
		"blocked attempt mount /tmp",
		"blocked attempt userns",
		"blocked attempt chroot /tmp",
		"blocked attempt mknod /tmp/sandboxtest-disk",
		"blocked attempt write /proc/sys/kernel/core_pattern",
		"blocked attempt write /proc/sysrq-trigger",
		"blocked attempt write /sys/fs/cgroup/cgroup.procs",
		"blocked attempt write /proc/sys/net/ipv4/ip_forward",
		"blocked attempt fill /big 64",
		"present /etc/image-file original",
		"REACHED attempt write /etc/image-file",
		"present /etc/image-file overwritten",
	}
	extra, err := testimage.Layer(testimage.File{Name: "etc/image-file", Mode: 0o644, Data: []byte("original")})
	if err != nil {
		t.Fatal(err)
	}
	img := importProgram(t, s, p, extra)
	expectLines(t, s, gw, img, want)
	// The image was not changed: the same image runs again.
	expectLines(t, s, gw, img, want)
}

func attackSurvive(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	bomb, daemon, session, main := "bomb-"+t.Name(), "daemon-"+t.Name(), "setsid-"+t.Name(), "main-"+t.Name()
	spec := gw.Spec("survivor", importProgram(t, s, sandboxtest.Program{
		{Op: "double_fork", Text: daemon},
		{Op: "mcp_call", Tool: "await_heartbeat", Args: map[string]any{"marker": daemon}},
		{Op: "spawn", Text: session},
		{Op: "mcp_call", Tool: "await_heartbeat", Args: map[string]any{"marker": session}},
		{Op: "fork_bomb", Text: bomb},
		{Op: "heartbeat", Text: main},
	}))
	spec.Limits.PIDs = 96
	inst, err := s.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{daemon, session, bomb, main} {
		awaitBeats(t, gw, m, 1, inst)
	}
	if err := inst.Destroy(context.Background()); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	// Only now is stdout complete: the runtime copies it until every
	// process of the run is gone, and may lag behind the heartbeats.
	if !strings.HasSuffix(string(inst.Logs().Stdout), "blocked fork_bomb\n") {
		t.Errorf("fork bomb was not stopped by Limits.PIDs: stdout %q", inst.Logs().Stdout)
	}
	for _, m := range []string{daemon, session, bomb, main} {
		assertQuiet(t, gw, m)
	}
	if procs := processesOf(s.HostID()); len(procs) != 0 {
		t.Errorf("processes %v of the run are alive after Destroy", procs)
	}
}

func attackSecondRun(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	daemon := "first-run-daemon-" + t.Name()
	img := importProgram(t, s, sandboxtest.Program{
		{Op: "env", Key: "FIRST_RUN_SECRET"},
		{Op: "read_file", Path: "/tmp/left"},
		{Op: "read_file", Path: "/root-file"},
		{Op: "read_file", Path: "/proc/2/status"},
		{Op: "write_file", Path: "/tmp/left", Data: "x"},
		{Op: "write_file", Path: "/root-file", Data: "y"},
		{Op: "double_fork", Text: daemon},
		{Op: "mcp_call", Tool: "await_heartbeat", Args: map[string]any{"marker": daemon}},
	})
	first := gw.Spec("first", img)
	first.Env["FIRST_RUN_SECRET"] = "s3cret"
	inst, err := s.Start(t.Context(), first)
	if err != nil {
		t.Fatal(err)
	}
	awaitBeats(t, gw, daemon, 1, inst)
	if _, err := inst.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := inst.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertQuiet(t, gw, daemon)
	want := []string{"env FIRST_RUN_SECRET unset", "absent /tmp/left", "absent /root-file", "absent /proc/2/status", "result ok"}
	// The first run's daemon is gone, and the second run's own starts only
	// after its reads.
	_, logs := runToEnd(t, s, gw.Spec("second", img))
	got := strings.Split(strings.TrimSuffix(string(logs.Stdout), "\n"), "\n")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("second run saw the first (-want +got):\n%s\nstderr %s", diff, logs.Stderr)
	}
}

// attackCompat32 makes a system call through the 32-bit compat ABI, which
// the seccomp filter (native ABI only) refuses by killing the thread.
func attackCompat32(t *testing.T, s *ocisandbox.Sandbox, gw *sandboxtest.Gateway) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the probe uses amd64's int 0x80")
	}
	bin, err := testimage.Build(t.Context(), t.TempDir(), testimage.Compat32Package)
	if err != nil {
		t.Fatal(err)
	}
	// Outside the sandbox the call works, or the kernel has no compat ABI
	// to block.
	if out, err := exec.CommandContext(t.Context(), bin).Output(); err != nil || !strings.HasPrefix(string(out), "compat32 returned") {
		t.Skipf("this kernel runs no 32-bit system calls (ia32 emulation off?): %q %v", out, err)
	}
	exit, logs := runToEnd(t, s, gw.Spec(t.Name(), importImage(t, s, must(testimage.CommandImage(bin)))))
	if got := string(logs.Stdout); got != "blocked compat32\n" || exit.Code != 0 {
		t.Errorf("compat32 probe: exit %+v, stdout %q, want \"blocked compat32\" (stderr %q)", exit, got, logs.Stderr)
	}
}

// processesOf returns the pids of live host processes in any cgroup of the
// Sandbox labelled hostID. Zombies are dead: one whose parent died waits
// for the host's init to reap it.
func processesOf(hostID string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(b), "/compatool-ocisandbox/"+hostID+"/") {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && strings.ContainsRune("ZX", rune(stat[i+2])) {
			continue
		}
		out = append(out, e.Name())
	}
	return out
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
