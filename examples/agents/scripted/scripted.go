// Package scripted is a reference agent without a model: it reads its goal,
// connects to the run's MCP endpoint with the run's token, and solves the
// notes tasks of examples/tasks/notes by following the goal's sentences.
// It shows the agent side of the environment contract (COMPATOOL_MCP_URL,
// COMPATOOL_MCP_TOKEN, COMPATOOL_RUN_ID, COMPATOOL_GOAL).
package scripted

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/compatool/compatool/sandbox"
)

// Config is what the agent gets from its environment.
type Config struct {
	MCPURL string
	Token  string
	Goal   string
	// HTTPClient reaches MCPURL; nil means http.DefaultClient's transport.
	HTTPClient *http.Client
}

// FromEnv reads the agent's configuration from the environment contract
// (COMPATOOL_MCP_URL, COMPATOOL_MCP_TOKEN, COMPATOOL_GOAL) through getenv;
// hc reaches the MCP URL (nil for the default transport).
func FromEnv(getenv func(string) string, hc *http.Client) Config {
	return Config{
		MCPURL:     getenv(sandbox.EnvMCPURL),
		Token:      getenv(sandbox.EnvMCPToken),
		Goal:       getenv(sandbox.EnvGoal),
		HTTPClient: hc,
	}
}

const quoted = `("(?:[^"\\]|\\.)*")`

var (
	addRe = regexp.MustCompile(`Create a note titled ` + quoted + ` with the body ` + quoted + `\.`)
	delRe = regexp.MustCompile(`Delete the note titled ` + quoted + `\.`)
)

// Action is one step the agent takes.
type Action struct {
	Tool string
	Args map[string]any
}

// Plan turns a goal into tool calls.
func Plan(goal string) ([]Action, error) {
	var plan []Action
	for _, m := range addRe.FindAllStringSubmatch(goal, -1) {
		title, err1 := strconv.Unquote(m[1])
		body, err2 := strconv.Unquote(m[2])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("scripted: cannot read goal: %w", err)
		}
		plan = append(plan, Action{"add_note", map[string]any{"title": title, "body": body}})
	}
	for _, m := range delRe.FindAllStringSubmatch(goal, -1) {
		title, err := strconv.Unquote(m[1])
		if err != nil {
			return nil, fmt.Errorf("scripted: cannot read goal: %w", err)
		}
		plan = append(plan, Action{"delete_note", map[string]any{"title": title}})
	}
	if len(plan) == 0 {
		return nil, errors.New("scripted: the goal asks for nothing this agent knows how to do")
	}
	return plan, nil
}

// Solve connects to the MCP endpoint and carries out the goal. It returns
// the first tool error.
func Solve(ctx context.Context, c Config) error {
	plan, err := Plan(c.Goal)
	if err != nil {
		return err
	}
	base := http.DefaultTransport
	if c.HTTPClient != nil && c.HTTPClient.Transport != nil {
		base = c.HTTPClient.Transport
	}
	hc := &http.Client{Transport: bearer{token: c.Token, base: base}}
	client := mcp.NewClient(&mcp.Implementation{Name: "compatool-scripted-agent", Version: "1.0.0"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: c.MCPURL, HTTPClient: hc, DisableStandaloneSSE: true, MaxRetries: -1}, nil)
	if err != nil {
		return fmt.Errorf("scripted: connect to %s: %w", c.MCPURL, err)
	}
	defer cs.Close()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "list_notes", Arguments: map[string]any{}}); err != nil {
		return fmt.Errorf("scripted: list_notes: %w", err)
	}
	for _, a := range plan {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: a.Tool, Arguments: a.Args})
		if err != nil {
			return fmt.Errorf("scripted: %s: %w", a.Tool, err)
		}
		if res.IsError {
			return fmt.Errorf("scripted: %s failed", a.Tool)
		}
	}
	return nil
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}
