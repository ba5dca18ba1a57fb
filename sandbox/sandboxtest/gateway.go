package sandboxtest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Gateway is a run's MCP endpoint for tests: a streamable-HTTP MCP server on
// a loopback httptest server that demands a bearer token and serves two
// tools, "echo" (returns its text) and "await_heartbeat" (returns once a
// heartbeat with the marker arrived). Requests whose User-Agent starts with
// [HeartbeatUserAgent] are heartbeats, counted per marker (the rest of the
// User-Agent). The suite uses one; driver tests may use their own. It is
// safe for concurrent use.
type Gateway struct {
	url, token string

	mu      sync.Mutex
	calls   []string
	beats   map[string]int
	changed chan struct{} // closed and replaced on every heartbeat
}

// NewGateway starts a Gateway that is closed when t's test ends.
func NewGateway(t testing.TB) *Gateway { return newGateway(t, "") }

// newGateway is NewGateway; if redirect is set, GET /redirect answers with a
// redirect there, so that the suite can check that drivers do not follow one
// off the gateway.
func newGateway(t testing.TB, redirect string) *Gateway {
	g := &Gateway{token: rand.Text(), beats: map[string]int{}, changed: make(chan struct{})}

	server := mcp.NewServer(&mcp.Implementation{Name: "sandboxtest", Version: "v1"}, nil)
	type echoIn struct {
		Text string `json:"text"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "echo", Description: "Returns its text."},
		func(_ context.Context, _ *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
			g.mu.Lock()
			g.calls = append(g.calls, in.Text)
			g.mu.Unlock()
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: in.Text}}}, nil, nil
		})
	type awaitIn struct {
		Marker string `json:"marker"`
	}
	mcp.AddTool(server, &mcp.Tool{Name: "await_heartbeat", Description: "Returns once a heartbeat with the marker arrived."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in awaitIn) (*mcp.CallToolResult, any, error) {
			if err := g.WaitBeats(ctx, in.Marker, 1); err != nil {
				return nil, nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ok"}}}, nil, nil
		})
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+g.token)) != 1 {
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		if marker, ok := strings.CutPrefix(r.UserAgent(), HeartbeatUserAgent); ok {
			g.beat(marker)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if redirect != "" && r.URL.Path == "/redirect" {
			http.Redirect(w, r, redirect, http.StatusFound)
			return
		}
		mcpHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	g.url = srv.URL + "/mcp"
	return g
}

// URL returns the MCP endpoint's URL.
func (g *Gateway) URL() string { return g.url }

// Token returns the bearer token the gateway demands.
func (g *Gateway) Token() string { return g.token }

// Spec returns a valid Spec that runs image as runID against the gateway,
// with its token in the environment and a one-minute deadline, so that a
// broken driver cannot hang a test.
func (g *Gateway) Spec(runID, image string) sandbox.Spec {
	return sandbox.Spec{
		RunID:  runID,
		Image:  image,
		Env:    map[string]string{sandbox.EnvMCPToken: g.token},
		MCPURL: g.url,
		Limits: sandbox.Limits{Timeout: time.Minute},
	}
}

func (g *Gateway) beat(marker string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.beats[marker]++
	close(g.changed)
	g.changed = make(chan struct{})
}

// Beats returns how many heartbeats with marker arrived so far.
func (g *Gateway) Beats(marker string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.beats[marker]
}

// WaitBeats returns once marker has at least n heartbeats, or ctx's error.
func (g *Gateway) WaitBeats(ctx context.Context, marker string, n int) error {
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

// SawCall reports whether the echo tool was called with text.
func (g *Gateway) SawCall(text string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Contains(g.calls, text)
}
