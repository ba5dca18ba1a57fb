package ocisandbox_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// gateway is a run's MCP endpoint for these tests: an echo tool, bearer
// auth, and a count of heartbeats per marker.
type gateway struct {
	url, token string

	mu      sync.Mutex
	beats   map[string]int
	changed chan struct{}
}

func newGateway(t testing.TB) *gateway {
	g := &gateway{token: rand.Text(), beats: map[string]int{}, changed: make(chan struct{})}
	server := mcp.NewServer(&mcp.Implementation{Name: "ocisandbox-test", Version: "v1"}, nil)
	type echoIn struct {
		Text string `json:"text"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns its text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
		})
	type awaitIn struct {
		Marker string `json:"marker"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "await_heartbeat", Description: "Returns once the marker beat."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in awaitIn) (*mcp.CallToolResult, any, error) {
			if err := g.waitBeats(ctx, in.Marker, 1); err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+g.token {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		if marker, ok := strings.CutPrefix(r.UserAgent(), sandboxtest.HeartbeatUserAgent); ok {
			g.mu.Lock()
			g.beats[marker]++
			close(g.changed)
			g.changed = make(chan struct{})
			g.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	g.url = srv.URL + "/mcp"
	return g
}

func (g *gateway) spec(runID, image string) sandbox.Spec {
	return sandbox.Spec{
		RunID: runID, Image: image, MCPURL: g.url,
		Env:    map[string]string{sandbox.EnvMCPToken: g.token},
		Limits: sandbox.Limits{Timeout: time.Minute},
	}
}

func (g *gateway) count(marker string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.beats[marker]
}

// waitBeats returns once marker has beaten n times, or ctx's error.
func (g *gateway) waitBeats(ctx context.Context, marker string, n int) error {
	for {
		g.mu.Lock()
		got, changed := g.beats[marker], g.changed
		g.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// awaitBeats waits up to 30s for the n-th heartbeat of marker.
func (g *gateway) awaitBeats(t testing.TB, marker string, n int, inst sandbox.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if g.waitBeats(ctx, marker, n) != nil {
		var logs sandbox.Logs
		if inst != nil {
			logs = inst.Logs()
		}
		t.Fatalf("heartbeat %d of %q never came (stdout %q, stderr %q)", n, marker, logs.Stdout, logs.Stderr)
	}
}

// assertQuiet fails if marker beats again (beyond one request in flight)
// within 300ms: its process should be dead.
func (g *gateway) assertQuiet(t testing.TB, marker string) {
	t.Helper()
	before := g.count(marker)
	deadline := time.NewTimer(300 * time.Millisecond)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		got, changed := g.beats[marker], g.changed
		g.mu.Unlock()
		if got > before+1 {
			t.Errorf("heartbeats %q go on after teardown: a process of the run survived", marker)
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			return
		}
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
