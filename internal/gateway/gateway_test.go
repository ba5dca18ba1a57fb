package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compatool/compatool/internal/gateway"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// decoded turns recorded JSON into comparable values.
func decoded(t *testing.T, calls []gateway.Call) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, c := range calls {
		m := map[string]any{"at": c.At, "name": c.Name, "args": string(c.Arguments), "is_error": c.IsError, "error": c.Error != ""}
		if c.Result != nil {
			var v any
			if err := json.Unmarshal(c.Result, &v); err != nil {
				t.Fatalf("result of %s is not JSON: %v", c.Name, err)
			}
			m["result"] = v
		}
		out = append(out, m)
	}
	return out
}

func TestFullSessionRecordedInOrder(t *testing.T) {
	ctx := context.Background()
	logs := &syncBuffer{}
	host := gateway.NewHost(&gateway.Options{
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    tick(),
	})
	var executed atomic.Int64
	run, token := open(t, host, "run-1", gateway.Backend{Server: taskServer(&executed)})
	if got, want := run.Path(), "/runs/run-1/mcp"; got != want {
		t.Errorf("Path() = %q, want %q", got, want)
	}
	srv := serve(t, host)

	cs, err := connect(ctx, srv.URL+run.Path(), bearer{token: token})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer cs.Close()

	var names []string
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatalf("list tools: %v", err)
		}
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	if diff := cmp.Diff([]string{"add", "echo", "fail"}, names); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}

	calls := []struct {
		name string
		args json.RawMessage
	}{
		// Key order and nesting must survive as sent.
		{"add", json.RawMessage(`{"b":3,"a":2}`)},
		{"echo", json.RawMessage(`{"text":"héllo \u003c\u003e","extra":{"z":[1,2],"a":null}}`)},
		{"fail", json.RawMessage(`{}`)},
		{"nope", json.RawMessage(`{"x":1}`)},
	}
	for _, c := range calls {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: c.name, Arguments: c.args})
		if (err != nil) != (c.name == "nope") {
			t.Fatalf("CallTool(%s) = %v, %v", c.name, res, err)
		}
	}
	if err := run.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	at := func(s int) time.Time { return time.Date(2026, 1, 2, 3, 4, 5+s, 0, time.UTC) }
	text := func(s string) map[string]any {
		return map[string]any{"content": []any{map[string]any{"type": "text", "text": s}}}
	}
	sum := text(`{"sum":5}`)
	sum["structuredContent"] = map[string]any{"sum": float64(5)}
	failed := text("it failed")
	failed["isError"] = true
	want := []map[string]any{
		{"at": at(1), "name": "add", "args": `{"b":3,"a":2}`, "is_error": false, "error": false, "result": sum},
		{"at": at(2), "name": "echo", "args": string(calls[1].args), "is_error": false, "error": false, "result": text("héllo <>")},
		{"at": at(3), "name": "fail", "args": `{}`, "is_error": true, "error": false, "result": failed},
		{"at": at(4), "name": "nope", "args": `{"x":1}`, "is_error": false, "error": true},
	}
	if diff := cmp.Diff(want, decoded(t, run.Calls())); diff != "" {
		t.Errorf("recorded calls (-want +got):\n%s", diff)
	}
	if got := executed.Load(); got != 3 {
		t.Errorf("tools executed %d times, want 3", got)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the token appears in the logs")
	}
}

func TestAuthRefusals(t *testing.T) {
	host := gateway.NewHost(nil)
	var n atomic.Int64
	runA, tokenA := open(t, host, "run-a", gateway.Backend{Server: taskServer(&n)})
	runB, tokenB := open(t, host, "run-b", gateway.Backend{Server: taskServer(&n)})
	runC, tokenC := open(t, host, "run-c", gateway.Backend{Server: taskServer(&n)})
	if err := runC.Close(); err != nil {
		t.Fatal(err)
	}
	srv := serve(t, host)
	urlA := srv.URL + runA.Path()

	tests := []struct {
		name, url, authz string
	}{
		{"no token", urlA, ""},
		{"empty bearer", urlA, "Bearer "},
		{"wrong token", urlA, "Bearer " + strings.Repeat("x", len(tokenA))},
		{"token with suffix", urlA, "Bearer " + tokenA + "x"},
		{"wrong scheme", urlA, "Basic " + tokenA},
		{"raw token", urlA, tokenA},
		{"other run's token", urlA, "Bearer " + tokenB},
		{"token on other run", srv.URL + runB.Path(), "Bearer " + tokenA},
		{"revoked token", srv.URL + runC.Path(), "Bearer " + tokenC},
		{"unknown run", srv.URL + "/runs/run-zzz/mcp", "Bearer " + tokenA},
		{"oversized token", urlA, "Bearer " + strings.Repeat("a", 1<<12)},
	}
	type answer struct {
		Status int
		Header http.Header
		Body   string
	}
	var first *answer
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, body := post(t, tt.url, tt.authz, "", initializeBody)
			got := answer{status, hdr, body}
			if status != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") != "Bearer" {
				t.Fatalf("got %d %q, want 401 with WWW-Authenticate: Bearer", status, hdr.Get("WWW-Authenticate"))
			}
			if first == nil {
				first = &got
			} else if diff := cmp.Diff(*first, got); diff != "" {
				t.Errorf("401 answers differ (-first +this):\n%s", diff)
			}
		})
	}

	// The right token opens the run; the scheme is case-insensitive.
	for _, authz := range []string{"Bearer " + tokenA, "bearer " + tokenA} {
		if status, _, body := post(t, urlA, authz, "", initializeBody); status != http.StatusOK {
			t.Errorf("initialize with %q: %d %s", authz[:7], status, body)
		}
	}
	if status, _, _ := post(t, srv.URL+"/runs/run-a/other", "Bearer "+tokenA, "", initializeBody); status != http.StatusNotFound {
		t.Errorf("unknown path: got %d, want 404", status)
	}
}

func TestSessionCannotCrossRuns(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(nil)
	var n atomic.Int64
	runA, tokenA := open(t, host, "run-a", gateway.Backend{Server: taskServer(&n)})
	runB, tokenB := open(t, host, "run-b", gateway.Backend{Server: taskServer(&n)})
	srv := serve(t, host)

	cs, err := connect(ctx, srv.URL+runA.Path(), bearer{token: tokenA})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	call := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":1}}}`
	// Run A's session through run B, with B's token or with A's.
	for _, tok := range []string{tokenB, tokenA} {
		if status, _, body := post(t, srv.URL+runB.Path(), "Bearer "+tok, cs.ID(), call); status < 400 {
			t.Errorf("session of run A accepted by run B: %d %s", status, body)
		}
	}
	if got := len(runB.Calls()); got != 0 {
		t.Errorf("run B recorded %d calls, want 0", got)
	}
}

func TestRevokedSessionCannotContinue(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(nil)
	var n atomic.Int64
	run, token := open(t, host, "run-1", gateway.Backend{Server: taskServer(&n)})
	srv := serve(t, host)
	cs, err := connect(ctx, srv.URL+run.Path(), bearer{token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"a": 1, "b": 2}}); err != nil {
		t.Fatalf("call before Close: %v", err)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	if err := run.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"a": 1, "b": 2}}); err == nil {
		t.Error("call after Close succeeded")
	}
	if status, _, _ := post(t, srv.URL+run.Path(), "Bearer "+token, cs.ID(), `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`); status != http.StatusUnauthorized {
		t.Errorf("request after Close: got %d, want 401", status)
	}
	if _, err := connect(ctx, srv.URL+run.Path(), bearer{token: token}); err == nil {
		t.Error("new session after Close succeeded")
	}
	if got := len(run.Calls()); got != 1 {
		t.Errorf("recorded %d calls, want 1", got)
	}
	if got := n.Load(); got != 1 {
		t.Errorf("tool executed %d times, want 1", got)
	}
}

func TestConcurrentRunsIsolated(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(nil)
	srv := serve(t, host)
	const runs, callsPerRun = 4, 25
	type opened struct {
		run      *gateway.Run
		token    string
		executed *atomic.Int64
	}
	var all []opened
	for i := range runs {
		executed := new(atomic.Int64)
		run, token := open(t, host, fmt.Sprintf("run-%d", i), gateway.Backend{Server: taskServer(executed)})
		all = append(all, opened{run, token, executed})
	}
	var wg sync.WaitGroup
	errs := make(chan error, runs*callsPerRun)
	for i, o := range all {
		wg.Go(func() {
			cs, err := connect(ctx, srv.URL+o.run.Path(), bearer{token: o.token})
			if err != nil {
				errs <- err
				return
			}
			defer cs.Close()
			var calls sync.WaitGroup
			for j := range callsPerRun {
				calls.Go(func() {
					_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]string{"text": fmt.Sprintf("%d/%d", i, j)}})
					if err != nil {
						errs <- err
					}
				})
			}
			calls.Wait()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, o := range all {
		if err := o.run.Close(); err != nil {
			t.Fatal(err)
		}
		var got, want []string
		for j := range callsPerRun {
			want = append(want, fmt.Sprintf(`{"text":"%d/%d"}`, i, j))
		}
		for _, c := range o.run.Calls() {
			got = append(got, string(c.Arguments))
		}
		if diff := cmp.Diff(want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
			t.Errorf("run %d calls (-want +got):\n%s", i, diff)
		}
		if got := o.executed.Load(); got != callsPerRun {
			t.Errorf("run %d executed %d calls, want %d", i, got, callsPerRun)
		}
	}
}

func TestMaxCalls(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(&gateway.Options{MaxCalls: 2})
	var executed atomic.Int64
	run, token := open(t, host, "run-1", gateway.Backend{Server: taskServer(&executed)})
	srv := serve(t, host)
	cs, err := connect(ctx, srv.URL+run.Path(), bearer{token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	var refused []bool
	for range 4 {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"a": 1, "b": 1}})
		if err != nil {
			t.Fatal(err)
		}
		refused = append(refused, res.IsError && strings.Contains(res.Content[0].(*mcp.TextContent).Text, "limit of 2 tool calls"))
	}
	if diff := cmp.Diff([]bool{false, false, true, true}, refused); diff != "" {
		t.Errorf("refused (-want +got):\n%s", diff)
	}
	if got := executed.Load(); got != 2 {
		t.Errorf("executed %d calls, want 2", got)
	}
	if got := len(run.Calls()); got != 2 {
		t.Errorf("recorded %d calls, want 2", got)
	}
}

func TestCloseCancelsRunningCall(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(nil)
	s := mcp.NewServer(&mcp.Implementation{Name: "slow"}, nil)
	entered := make(chan struct{})
	mcp.AddTool(s, &mcp.Tool{Name: "wait"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
		close(entered)
		<-ctx.Done()
		return nil, nil, fmt.Errorf("stopped: %w", ctx.Err())
	})
	run, token := open(t, host, "run-1", gateway.Backend{Server: s})
	srv := serve(t, host)
	cs, err := connect(ctx, srv.URL+run.Path(), bearer{token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	go cs.CallTool(ctx, &mcp.CallToolParams{Name: "wait"})
	<-entered
	if got := len(run.Calls()); got != 0 {
		t.Errorf("a running call is listed: %d calls", got)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	calls := run.Calls()
	if len(calls) != 1 || !calls[0].IsError || !strings.Contains(string(calls[0].Result), "context canceled") {
		t.Errorf("calls after Close = %+v, want one cancelled call", calls)
	}
}

func TestBodyLimit(t *testing.T) {
	host := gateway.NewHost(&gateway.Options{MaxBodyBytes: 1 << 10})
	var n atomic.Int64
	run, token := open(t, host, "run-1", gateway.Backend{Server: taskServer(&n)})
	srv := serve(t, host)
	big := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"pad":"` + strings.Repeat("x", 2<<10) + `"}}`
	tests := []struct {
		name string
		body string
		want int
	}{
		{"within", initializeBody, http.StatusOK},
		{"over", big, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		if status, _, body := post(t, srv.URL+run.Path(), "Bearer "+token, "", tt.body); status != tt.want {
			t.Errorf("%s: got %d (%s), want %d", tt.name, status, body, tt.want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	host := gateway.NewHost(nil)
	var n atomic.Int64
	server := taskServer(&n)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		id   string
		b    gateway.Backend
		want error
	}{
		{"empty id", context.Background(), "", gateway.Backend{Server: server}, gateway.ErrInvalid},
		{"id with slash", context.Background(), "a/b", gateway.Backend{Server: server}, gateway.ErrInvalid},
		{"no backend", context.Background(), "r1", gateway.Backend{}, gateway.ErrInvalid},
		{"two backends", context.Background(), "r1", gateway.Backend{Server: server, Upstream: &gateway.Upstream{URL: "http://127.0.0.1:1/mcp"}}, gateway.ErrInvalid},
		{"bad upstream url", context.Background(), "r1", gateway.Backend{Upstream: &gateway.Upstream{URL: "ftp://x/mcp"}}, gateway.ErrInvalid},
		{"cancelled ctx", cancelled, "r1", gateway.Backend{Server: server}, context.Canceled},
		{"cancelled ctx upstream", cancelled, "r1", gateway.Backend{Upstream: &gateway.Upstream{URL: "http://127.0.0.1:1/mcp"}}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := host.Open(tt.ctx, tt.id, tt.b); !errors.Is(err, tt.want) {
				t.Errorf("Open = %v, want %v", err, tt.want)
			}
		})
	}

	run, tokenOld, err := host.Open(context.Background(), "dup", gateway.Backend{Server: server})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := host.Open(context.Background(), "dup", gateway.Backend{Server: taskServer(&n)}); !errors.Is(err, gateway.ErrRunExists) {
		t.Errorf("second Open = %v, want ErrRunExists", err)
	}
	run.Close()
	run2, tokenNew, err := host.Open(context.Background(), "dup", gateway.Backend{Server: taskServer(&n)})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	defer run2.Close()
	if tokenNew == tokenOld || len(tokenNew) != 43 || strings.ContainsAny(tokenNew, "+/=") {
		t.Errorf("tokens %q then %q: want distinct 43-byte base64url", tokenOld, tokenNew)
	}
	srv := serve(t, host)
	if status, _, _ := post(t, srv.URL+run2.Path(), "Bearer "+tokenOld, "", initializeBody); status != http.StatusUnauthorized {
		t.Errorf("old token on reopened run: got %d, want 401", status)
	}
}

func TestSessionLimit(t *testing.T) {
	host := gateway.NewHost(nil)
	var n atomic.Int64
	run, token := open(t, host, "run-1", gateway.Backend{Server: taskServer(&n)})
	srv := serve(t, host)
	initialize := func() (ok bool, sessionID string) {
		status, hdr, body := post(t, srv.URL+run.Path(), "Bearer "+token, "", initializeBody)
		// The SDK answers a refused initialize inside a 200 SSE stream.
		return status == http.StatusOK && !strings.Contains(body, `"error"`), hdr.Get("Mcp-Session-Id")
	}
	var ids []string
	for i := range 64 {
		ok, id := initialize()
		if !ok {
			t.Fatalf("session %d refused", i)
		}
		ids = append(ids, id)
	}
	if ok, _ := initialize(); ok {
		t.Fatal("65th session accepted")
	}

	// Ending a session makes room for another.
	req, err := http.NewRequest(http.MethodDelete, srv.URL+run.Path(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Mcp-Session-Id", ids[0])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %s", resp.Status)
	}
	// The session is forgotten when its connection has wound down; retry
	// until then.
	for i := 0; ; i++ {
		if ok, _ := initialize(); ok {
			break
		}
		if i == 1000 {
			t.Fatal("no room for a new session after DELETE")
		}
	}
}

func TestHostUseOfServerNotRecorded(t *testing.T) {
	ctx := context.Background()
	host := gateway.NewHost(nil)
	var n atomic.Int64
	server := taskServer(&n)
	run, _ := open(t, host, "run-1", gateway.Backend{Server: server})

	// The host (say, a grader) talks to the same server in process.
	ct, st := mcp.NewInMemoryTransports()
	ss, err := server.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "grader"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"a": 1, "b": 1}}); err != nil {
		t.Fatal(err)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing the run leaves the host's session alone.
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]int{"a": 1, "b": 1}}); err != nil {
		t.Errorf("host session after Close: %v", err)
	}
	if got := run.Calls(); len(got) != 0 {
		t.Errorf("host's calls recorded: %v", got)
	}
}
