package compatool

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/compatool/compatool/storage"
)

// TaskContent is a task's private content: the goal the agent is given and
// the environment's configuration. It exists in plaintext only in memory
// while a run executes, and in a store only sealed or, after retirement,
// published.
type TaskContent struct {
	Goal   string          `json:"goal"`
	Config json.RawMessage `json:"config,omitempty"`
}

// An Environment serves a kind of task: for each run it opens a fresh tool
// server and grades the final state. Implementations must be safe for
// concurrent use; sessions of different runs must share no state.
type Environment interface {
	// Open prepares one run. The returned session is closed by the harness
	// when the run ends.
	Open(ctx context.Context, task TaskContent) (*Session, error)
}

// EnvironmentFunc adapts a function to [Environment].
type EnvironmentFunc func(ctx context.Context, task TaskContent) (*Session, error)

// Open calls f.
func (f EnvironmentFunc) Open(ctx context.Context, task TaskContent) (*Session, error) {
	return f(ctx, task)
}

// Session is one run's tool server and grader.
type Session struct {
	// Server is the in-process tool server for this run only. Exactly one
	// of Server and Upstream is set.
	Server *mcp.Server
	// Upstream is a remote tool server; the gateway adds its credentials on
	// its side and never hands them to the agent.
	Upstream *Upstream
	// Secrets are extra environment variables injected into the sandbox for
	// this run only (e.g. a per-run connection string). Their values are
	// redacted wherever they appear in the transcript.
	Secrets map[string]string
	// Grade judges the run from the tool calls the agent made and the tool
	// server's final state. It is called once, after the sandbox is
	// destroyed, and only when the agent exited with status 0.
	Grade func(ctx context.Context, calls []storage.ToolCall) (Grade, error)
	// Close releases the session; it may be nil.
	Close func() error
}

// Upstream is a remote MCP tool server reached over Streamable HTTP.
type Upstream struct {
	URL string
	// Header holds the credentials the gateway adds to every request. They
	// are redacted from transcripts like secrets.
	Header http.Header
	// HTTPClient is used to reach URL; nil means a default client.
	HTTPClient *http.Client
}

// Grade is a grader's verdict.
type Grade struct {
	Passed bool
	// Score is in [0, 1].
	Score float64
	// Detail explains the verdict; it is redacted before it is stored.
	Detail string
}
