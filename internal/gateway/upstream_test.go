package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/compatool/compatool/internal/gateway"
	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const (
	upstreamKey    = "up-key-0123456789"
	upstreamBearer = "up-bearer-abcdef012345"
)

func upstreamHeader() http.Header {
	return http.Header{"X-Api-Key": {upstreamKey}, "Authorization": {"Bearer " + upstreamBearer}}
}

// upstreamServer serves a tool server that refuses requests without the
// upstream credentials. It lists one tool per page.
func upstreamServer(t *testing.T) (*mcp.Server, string) {
	s := mcp.NewServer(&mcp.Implementation{Name: "upstream-task", Version: "v2"}, &mcp.ServerOptions{PageSize: 1, Instructions: "use the tools"})
	schema := map[string]any{"type": "object"}
	// echo answers with its raw arguments, to show they arrive as sent.
	s.AddTool(&mcp.Tool{Name: "echo", InputSchema: schema}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(req.Params.Arguments)}}}, nil
	})
	// leak answers with the credential it was sent.
	s.AddTool(&mcp.Tool{Name: "leak", InputSchema: schema}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "key=" + req.Extra.Header.Get("X-Api-Key")}}}, nil
	})
	// boom fails with the credential in its error.
	s.AddTool(&mcp.Tool{Name: "boom", InputSchema: schema}, func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return nil, &jsonrpc.Error{Code: -32000, Message: "cannot log in with " + req.Extra.Header.Get("Authorization")}
	})
	s.AddTool(&mcp.Tool{Name: "oops", InputSchema: schema}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return nil, &jsonrpc.Error{Code: -32001, Message: "oops: the database is down"}
	})
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != upstreamKey || r.Header.Get("Authorization") != "Bearer "+upstreamBearer {
			http.Error(w, "upstream: bad credentials", http.StatusUnauthorized)
			return
		}
		mcpHandler.ServeHTTP(w, r)
	}))
	return s, srv.URL + "/mcp"
}

func TestUpstreamProxyKeepsCredentials(t *testing.T) {
	ctx := context.Background()
	upServer, upURL := upstreamServer(t)
	host := gateway.NewHost(nil)
	run, token := open(t, host, "run-up", gateway.Backend{Upstream: &gateway.Upstream{URL: upURL, Header: upstreamHeader()}})
	srv := serve(t, host)

	rec := &recorder{base: bearer{token: token}}
	cs, err := connect(ctx, srv.URL+run.Path(), rec)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if got := cs.InitializeResult().ServerInfo.Name; got != "upstream-task" {
		t.Errorf("server name = %q, want the upstream's", got)
	}
	var names []string
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	if diff := cmp.Diff([]string{"boom", "echo", "leak", "oops"}, names); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}

	args := `{"text":"hi","nested":{"z":[1,2],"a":null}}`
	type outcome struct {
		Text    string
		IsError bool
		Err     string
	}
	var got []outcome
	for _, name := range []string{"echo", "leak", "boom", "oops"} {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(args)})
		var o outcome
		if err != nil {
			o.Err = err.Error()
		} else {
			o.Text, o.IsError = res.Content[0].(*mcp.TextContent).Text, res.IsError
		}
		got = append(got, o)
	}
	cs.Close()
	if err := run.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	for i, o := range got {
		got[i].Err, _, _ = strings.Cut(o.Err, ": Internal Server Error") // transport suffix
		if j := strings.Index(o.Err, "gateway:"); j >= 0 {
			got[i].Err = o.Err[j:]
		}
		if j := strings.Index(o.Err, "oops:"); j >= 0 {
			got[i].Err = o.Err[j:]
		}
	}
	want := []outcome{
		{Text: args},
		{Text: "gateway: the tool's result was withheld because it contains the tool server's credential", IsError: true},
		{Err: "gateway: the task's tool server failed to answer; the call may not have completed"},
		{Err: "oops: the database is down"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}

	seen := rec.String()
	if !strings.Contains(seen, "oops: the database is down") {
		t.Fatalf("the recorder missed the responses:\n%s", seen)
	}
	for _, secret := range []string{upstreamKey, upstreamBearer} {
		if strings.Contains(seen, secret) {
			t.Errorf("the agent received %q:\n%s", secret, seen)
		}
	}
	for _, c := range run.Calls() {
		for _, b := range [][]byte{c.Arguments, c.Result, []byte(c.Error)} {
			if s := string(b); strings.Contains(s, upstreamKey) || strings.Contains(s, upstreamBearer) {
				t.Errorf("recorded call %s holds a credential: %s", c.Name, s)
			}
		}
	}
	var recorded []string
	for _, c := range run.Calls() {
		recorded = append(recorded, c.Name+" "+string(c.Arguments))
	}
	if diff := cmp.Diff([]string{"echo " + args, "leak " + args, "boom " + args, "oops " + args}, recorded); diff != "" {
		t.Errorf("recorded (-want +got):\n%s", diff)
	}
	for ss := range upServer.Sessions() {
		t.Errorf("upstream session %s still open after Close", ss.ID())
	}
}

func TestUpstreamOpenFailures(t *testing.T) {
	_, upURL := upstreamServer(t)
	host := gateway.NewHost(nil)
	if _, _, err := host.Open(context.Background(), "run-x", gateway.Backend{Upstream: &gateway.Upstream{URL: upURL}}); err == nil {
		t.Error("Open without the upstream's credentials succeeded")
	}

	// A redirect to another host does not take the credentials along.
	var leaked atomic.Bool
	elsewhere := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "" || r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	redirector := serve(t, http.RedirectHandler(elsewhere.URL+"/mcp", http.StatusTemporaryRedirect))
	if _, _, err := host.Open(context.Background(), "run-y", gateway.Backend{Upstream: &gateway.Upstream{URL: redirector.URL + "/mcp", Header: upstreamHeader()}}); err == nil {
		t.Error("Open through a redirect to a refusing server succeeded")
	}
	if leaked.Load() {
		t.Error("credentials followed a redirect to another host")
	}
	if status, _, _ := post(t, serve(t, host).URL+"/runs/run-x/mcp", "Bearer x", "", initializeBody); status != http.StatusUnauthorized {
		t.Errorf("failed run answers %d, want 401", status)
	}
}

func TestUpstreamOpenHonoursContext(t *testing.T) {
	arrived := make(chan struct{}, 1)
	var hits atomic.Int64
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		io.Copy(io.Discard, r.Body) // lets the server notice the client leaving
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done() // never answers
	}))
	host := gateway.NewHost(nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-arrived
		cancel()
	}()
	_, _, err := host.Open(ctx, "run-1", gateway.Backend{Upstream: &gateway.Upstream{URL: srv.URL + "/mcp"}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Open = %v, want context.Canceled", err)
	}
	if hits.Load() == 0 {
		t.Error("the upstream was never asked")
	}
}
