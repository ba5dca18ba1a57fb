// Package benchrun measures ocisandbox runs for its benchmark and the
// ocibench command: sandbox start to the agent's first MCP request, whole
// runs, `docker run --network none` of the same image as a baseline, and
// the host resources that concurrent runs leave behind.
package benchrun

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Program is what every measured run does: one MCP tool call.
var Program = sandboxtest.Program{{Op: "mcp_call", Tool: "echo", Args: map[string]any{"text": "bench"}}}

// Gateway is an MCP endpoint with an echo tool that records when it saw
// its first request since the last Reset.
type Gateway struct {
	URL, Token string
	srv        *httptest.Server

	mu    sync.Mutex
	first time.Time
	seen  chan struct{}
}

// NewGateway starts a Gateway on 127.0.0.1; Close stops it.
func NewGateway() *Gateway {
	g := &Gateway{Token: rand.Text(), seen: make(chan struct{})}
	server := mcp.NewServer(&mcp.Implementation{Name: "ocibench", Version: "v1"}, nil)
	type in struct {
		Text string `json:"text"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "echo"}, func(_ context.Context, _ *mcp.CallToolRequest, a in) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: a.Text}}}, nil, nil
	})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		if g.first.IsZero() {
			g.first = time.Now()
			close(g.seen)
		}
		g.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+g.Token {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	g.URL = g.srv.URL + "/mcp"
	return g
}

// Close stops the gateway.
func (g *Gateway) Close() { g.srv.Close() }

// Reset forgets the first request.
func (g *Gateway) Reset() {
	g.mu.Lock()
	g.first, g.seen = time.Time{}, make(chan struct{})
	g.mu.Unlock()
}

// First waits for the first request since Reset and returns its time.
func (g *Gateway) First(ctx context.Context) (time.Time, error) {
	g.mu.Lock()
	seen := g.seen
	g.mu.Unlock()
	select {
	case <-seen:
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.first, nil
}

// Spec returns a spec for one run of image against g.
func (g *Gateway) Spec(runID, image string) sandbox.Spec {
	return sandbox.Spec{RunID: runID, Image: image, MCPURL: g.URL,
		Env: map[string]string{sandbox.EnvMCPToken: g.Token}, Limits: sandbox.Limits{Timeout: time.Minute}}
}

// Timing is one run's measurements.
type Timing struct {
	FirstRequest time.Duration // Start called → gateway's first request
	Whole        time.Duration // Start called → Destroy returned
}

// Run runs image once against g (which it resets) and measures it.
func Run(ctx context.Context, s *ocisandbox.Sandbox, g *Gateway, runID, image string) (Timing, error) {
	g.Reset()
	t0 := time.Now()
	inst, err := s.Start(ctx, g.Spec(runID, image))
	if err != nil {
		return Timing{}, err
	}
	defer inst.Destroy(context.Background())
	first, err := g.First(ctx)
	if err != nil {
		return Timing{}, fmt.Errorf("no MCP request: %w (logs %+v)", err, inst.Logs())
	}
	exit, err := inst.Wait(ctx)
	if err != nil {
		return Timing{}, err
	}
	if exit.Code != 0 {
		return Timing{}, fmt.Errorf("agent exited %+v: %s", exit, inst.Logs().Stderr)
	}
	if err := inst.Destroy(ctx); err != nil {
		return Timing{}, err
	}
	return Timing{FirstRequest: first.Sub(t0), Whole: time.Since(t0)}, nil
}

// Percentile returns the p-th percentile (0–100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

// DockerAvailable reports whether a Docker daemon answers `docker info`.
func DockerAvailable(ctx context.Context) error {
	docker, err := exec.LookPath("docker")
	if err != nil {
		return fmt.Errorf("no docker command: %w", err)
	}
	if out, err := exec.CommandContext(ctx, docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return fmt.Errorf("docker daemon not reachable: %s", bytes.TrimSpace(out))
	}
	return nil
}

// DockerRun loads the `docker save` archive and times n runs of
// `docker run --rm --network none` of it: start → first line of output,
// and the whole run. The agent cannot reach a gateway without a network,
// so it prints a line instead of calling a tool.
func DockerRun(ctx context.Context, archive, tag string, n int) ([]Timing, error) {
	if out, err := exec.CommandContext(ctx, "docker", "load", "-i", archive).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("docker load: %v: %s", err, out)
	}
	var ts []Timing
	for range n {
		t0 := time.Now()
		cmd := exec.CommandContext(ctx, "docker", "run", "--rm", "--network", "none",
			"-e", sandboxtest.ProgramEnv+`=[{"op":"print","text":"ready\n"}]`, tag)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		buf := make([]byte, 1)
		_, rerr := out.Read(buf)
		first := time.Since(t0)
		if err := cmd.Wait(); err != nil || rerr != nil {
			return nil, fmt.Errorf("docker run: %v %v", err, rerr)
		}
		ts = append(ts, Timing{FirstRequest: first, Whole: time.Since(t0)})
	}
	return ts, nil
}

// Resources counts what runs hold on the host.
type Resources struct {
	Mounts, NetNS, Cgroups, Processes int
}

// Count returns the host's mounts, pinned network namespaces, cgroups under
// ocisandbox's parent, and processes of runtime (by binary path) or in
// ocisandbox's cgroups. These are host-wide figures, right only when
// nothing else on the host starts or ends containers or mounts meanwhile;
// tests use [CountOwned].
func Count(runtime string) Resources {
	var r Resources
	for _, m := range mounts() {
		r.Mounts++
		if m.fstype == "nsfs" {
			r.NetNS++
		}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/compatool-ocisandbox")
	if more, _ := filepath.Glob("/sys/fs/cgroup/compatool-ocisandbox"); len(more) > 0 {
		roots = append(roots, more...)
	}
	r.Cgroups = countDirs(roots)
	for _, p := range processes() {
		if p.exe == runtime || strings.Contains(p.cgroup, "/compatool-ocisandbox/") {
			r.Processes++
		}
	}
	return r
}

// Owner names what one Sandbox holds on the host.
type Owner struct {
	// HostID is the Sandbox's HostID: it names its cgroups and appears in
	// the command line of every runtime process it starts (whose state
	// lives under StateDir/hosts/<HostID>).
	HostID string
	// Dirs are its Options.StateDir and Options.CacheDir: its mounts and
	// pinned network namespaces are below them.
	Dirs []string
}

// CountOwned counts what the Sandbox o describes holds, and nothing else
// on the host: mounts and pinned network namespaces below its
// directories, its cgroups, and live processes in its cgroups or whose
// command line names its host id. Other Sandboxes, containers and mounts
// on the host, in this process or others, do not change the figures.
func CountOwned(o Owner) Resources {
	var r Resources
	for _, m := range mounts() {
		if !slices.ContainsFunc(o.Dirs, func(d string) bool { return strings.HasPrefix(m.point, filepath.Clean(d)+"/") }) {
			continue
		}
		r.Mounts++
		if m.fstype == "nsfs" {
			r.NetNS++
		}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/compatool-ocisandbox/" + o.HostID)
	if more, _ := filepath.Glob("/sys/fs/cgroup/compatool-ocisandbox/" + o.HostID); len(more) > 0 {
		roots = append(roots, more...)
	}
	r.Cgroups = countDirs(roots)
	for _, p := range processes() {
		if !p.dead && (strings.Contains(p.cgroup, "/compatool-ocisandbox/"+o.HostID+"/") || strings.Contains(p.cmdline, o.HostID)) {
			r.Processes++
		}
	}
	return r
}

type mount struct{ point, fstype string }

// mounts parses /proc/self/mountinfo (octal escapes in mount points are
// left as they are: the directories compared with them have none).
func mounts() []mount {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []mount
	for l := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		out = append(out, mount{point: f[4], fstype: f[sep+1]})
	}
	return out
}

func countDirs(roots []string) int {
	n := 0
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				n++
			}
			return nil
		})
	}
	return n
}

type process struct {
	exe, cgroup, cmdline string
	dead                 bool // a zombie, waiting for its parent to reap it
}

func processes() []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		dir := filepath.Join("/proc", e.Name())
		cg, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		stat, _ := os.ReadFile(filepath.Join(dir, "stat"))
		i := bytes.LastIndexByte(stat, ')')
		dead := i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X')
		out = append(out, process{exe: exe, cgroup: string(cg), cmdline: string(cmdline), dead: dead})
	}
	return out
}

// Concurrent runs n runs of image at once and returns the first error.
func Concurrent(ctx context.Context, s *ocisandbox.Sandbox, g *Gateway, image string, n int) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			inst, err := s.Start(ctx, g.Spec(fmt.Sprintf("concurrent-%d", i), image))
			if err != nil {
				errs[i] = err
				return
			}
			exit, err := inst.Wait(ctx)
			if derr := inst.Destroy(context.Background()); err == nil {
				err = derr
			}
			if err == nil && exit.Code != 0 {
				err = fmt.Errorf("run %d exited %+v: %s", i, exit, inst.Logs().Stderr)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
