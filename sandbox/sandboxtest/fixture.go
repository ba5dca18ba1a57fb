package sandboxtest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// fixture is the host side of the suite: the run's MCP server and the host
// services no agent may reach.
type fixture struct {
	url, token string
	hostAddr   string // an HTTP service on 127.0.0.1, another port than url
	host6Addr  string // the same on [::1], if the host has IPv6 loopback

	mu      sync.Mutex
	calls   []string
	beats   map[string]int
	changed chan struct{} // closed and replaced on every heartbeat
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{token: rand.Text(), beats: map[string]int{}, changed: make(chan struct{})}

	server := mcp.NewServer(&mcp.Implementation{Name: "sandboxtest", Version: "v1"}, nil)
	type echoIn struct {
		Text string `json:"text"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns its text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			f.mu.Lock()
			f.calls = append(f.calls, in.Text)
			f.mu.Unlock()
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
		})
	type awaitIn struct {
		Marker string `json:"marker"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "await_heartbeat", Description: "Returns once a heartbeat with the marker arrived."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in awaitIn) (*mcp.CallToolResult, any, error) {
			if err := f.waitBeats(ctx, in.Marker, 1); err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+f.token)) != 1 {
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		if marker, ok := strings.CutPrefix(r.UserAgent(), HeartbeatUserAgent); ok {
			f.beat(marker)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "http://"+f.hostAddr+"/", http.StatusFound)
			return
		}
		mcpHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL + "/mcp"

	hostService := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("host service\n")) })
	host := httptest.NewServer(hostService)
	t.Cleanup(host.Close)
	f.hostAddr = host.Listener.Addr().String()

	f.host6Addr = "[::1]:1"
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		host6 := httptest.NewUnstartedServer(hostService)
		host6.Listener.Close()
		host6.Listener = ln
		host6.Start()
		t.Cleanup(host6.Close)
		f.host6Addr = ln.Addr().String()
	}
	return f
}

func (f *fixture) beat(marker string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beats[marker]++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fixture) beatCount(marker string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.beats[marker]
}

// waitBeats returns once marker has at least n heartbeats, or ctx's error.
func (f *fixture) waitBeats(ctx context.Context, marker string, n int) error {
	for {
		f.mu.Lock()
		got, changed := f.beats[marker], f.changed
		f.mu.Unlock()
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

func (f *fixture) sawCall(text string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.calls, text)
}
