package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/compatool/compatool/internal/gateway"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// withToken is how an agent presents its run's token.
type withToken string

func (t withToken) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(t))
	return http.DefaultTransport.RoundTrip(r)
}

func Example() {
	ctx := context.Background()

	// The task's tool server, made for this run.
	tools := mcp.NewServer(&mcp.Implementation{Name: "calculator"}, nil)
	type in struct{ A, B int }
	type out struct{ Sum int }
	mcp.AddTool(tools, &mcp.Tool{Name: "add"}, func(_ context.Context, _ *mcp.CallToolRequest, x in) (*mcp.CallToolResult, out, error) {
		return nil, out{x.A + x.B}, nil
	})

	// The harness opens the run's gateway and hands URL and token to the
	// sandbox (COMPATOOL_MCP_URL, COMPATOOL_MCP_TOKEN).
	host := gateway.NewHost(nil)
	srv := httptest.NewServer(host)
	defer srv.Close()
	run, token, err := host.Open(ctx, "run-42", gateway.Backend{Server: tools})
	if err != nil {
		fmt.Println(err)
		return
	}

	// The agent.
	agent := mcp.NewClient(&mcp.Implementation{Name: "agent"}, nil)
	cs, err := agent.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint:   srv.URL + run.Path(),
		HTTPClient: &http.Client{Transport: withToken(token)},
	}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"A": 2, "B": 3}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("agent got:", res.StructuredContent)
	cs.Close()

	// The run ends: the token is revoked and the calls go to the grader.
	if err := run.Close(); err != nil {
		fmt.Println(err)
	}
	for _, c := range run.Calls() {
		fmt.Printf("recorded: %s %s -> %s\n", c.Name, c.Arguments, c.Result)
	}
	// Output:
	// agent got: map[Sum:5]
	// recorded: add {"A":2,"B":3} -> {"content":[{"type":"text","text":"{\"Sum\":5}"}],"structuredContent":{"Sum":5}}
}
