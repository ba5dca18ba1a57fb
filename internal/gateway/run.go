package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/compatool/compatool/storage"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// maxSessions bounds the live MCP sessions of one run, so that an agent
// cannot exhaust the host by opening sessions without end.
const maxSessions = 64

// errClosed answers requests that race with [Run.Close].
var errClosed = errors.New("gateway: the run is closed")

// Call is one recorded tools/call: when it started and what was asked and
// answered.
type Call struct {
	At time.Time
	storage.ToolCall
}

// Run is one run's gateway, returned by [Host.Open]. Its methods are safe for
// concurrent use.
type Run struct {
	host      *Host
	id        string
	tokenHash [32]byte
	handler   http.Handler
	upstream  *upstream // nil for an in-process server

	// ctx ends when Close starts; tool calls still running see it.
	ctx    context.Context
	cancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
	inflight  sync.WaitGroup // tool calls running; Add only under mu while !closed

	mu       sync.Mutex
	closed   bool
	calls    []record
	refused  int
	sessions map[*mcp.ServerSession]struct{}
}

type record struct {
	Call
	done bool
}

func newRun(h *Host, id string, hash [32]byte) *Run {
	ctx, cancel := context.WithCancel(context.Background())
	return &Run{host: h, id: id, tokenHash: hash, ctx: ctx, cancel: cancel, sessions: make(map[*mcp.ServerSession]struct{})}
}

// Path returns the run's endpoint path on its [Host]: "/runs/<runID>/mcp".
func (r *Run) Path() string { return "/runs/" + r.id + "/mcp" }

// Calls returns a copy of the tool calls that have completed so far, in the
// order they started. A call still running is not included; after Close
// returns every call is complete.
func (r *Run) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Call, 0, len(r.calls))
	for _, c := range r.calls {
		if !c.done {
			continue
		}
		c.Arguments = bytes.Clone(c.Arguments)
		c.Result = bytes.Clone(c.Result)
		out = append(out, c.Call)
	}
	return out
}

// Close revokes the run: from now on its token is refused with 401. It
// cancels the context of tool calls still running and waits for them to
// return (tool handlers must honour ctx), closes the agent's MCP sessions,
// and closes the upstream session. Close is idempotent; calls after the first
// return nil.
func (r *Run) Close() error {
	first := false
	r.closeOnce.Do(func() {
		first = true
		r.closeErr = r.shutdown()
	})
	if !first {
		return nil
	}
	return r.closeErr
}

func (r *Run) shutdown() error {
	r.host.remove(r)
	r.mu.Lock()
	r.closed = true
	sessions := make([]*mcp.ServerSession, 0, len(r.sessions))
	for ss := range r.sessions {
		sessions = append(sessions, ss)
	}
	r.mu.Unlock()

	r.cancel()
	for _, ss := range sessions {
		ss.Close() // waits for the session's requests to return
	}
	r.inflight.Wait()
	var err error
	if r.upstream != nil {
		err = r.upstream.close()
	}
	r.mu.Lock()
	calls, refused := len(r.calls), r.refused
	r.mu.Unlock()
	r.host.log.Info("gateway: run closed", "run", r.id, "calls", calls, "refused", refused)
	return err
}

// middleware records the tools/call requests of this run's agent and tracks
// its sessions. Requests of any other session (another run, or the host's own
// use of an in-process server) pass through untouched.
func (r *Run) middleware(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		if owner, _ := ctx.Value(runKey{}).(*Run); owner != r {
			return next(ctx, method, req)
		}
		switch method {
		case "tools/call":
			if ctr, ok := req.(*mcp.CallToolRequest); ok {
				return r.call(ctx, ctr, next)
			}
		case "initialize":
			return r.initialize(ctx, method, req, next)
		}
		return next(ctx, method, req)
	}
}

func (r *Run) initialize(ctx context.Context, method string, req mcp.Request, next mcp.MethodHandler) (mcp.Result, error) {
	ss, ok := req.GetSession().(*mcp.ServerSession)
	if !ok {
		return next(ctx, method, req)
	}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return nil, errClosed
	case len(r.sessions) >= maxSessions:
		r.mu.Unlock()
		return nil, fmt.Errorf("gateway: this run already has %d open MCP sessions; close one (DELETE) before opening another", maxSessions)
	}
	_, known := r.sessions[ss]
	r.sessions[ss] = struct{}{}
	r.mu.Unlock()
	if !known {
		go func() {
			_ = ss.Wait()
			r.mu.Lock()
			delete(r.sessions, ss)
			r.mu.Unlock()
		}()
	}
	return next(ctx, method, req)
}

func (r *Run) call(ctx context.Context, req *mcp.CallToolRequest, next mcp.MethodHandler) (mcp.Result, error) {
	var name string
	var args json.RawMessage
	if req.Params != nil {
		name, args = req.Params.Name, bytes.Clone(req.Params.Arguments)
	}
	at, start := r.host.now(), time.Now()

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errClosed
	}
	if len(r.calls) >= r.host.maxCalls {
		r.refused++
		first := r.refused == 1
		r.mu.Unlock()
		if first {
			r.host.log.Warn("gateway: tool call limit reached; refusing further calls", "run", r.id, "limit", r.host.maxCalls)
		}
		return &mcp.CallToolResult{
			IsError: true,
			Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf("gateway: this run reached its limit of %d tool calls; the call was not executed", r.host.maxCalls)}},
		}, nil
	}
	i := len(r.calls)
	r.calls = append(r.calls, record{Call: Call{At: at, ToolCall: storage.ToolCall{Name: name, Arguments: args}}})
	r.inflight.Add(1)
	r.mu.Unlock()
	defer r.inflight.Done()

	// The call ends with the run as well as with its session.
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.ctx, cancel)
	res, err := next(ctx, "tools/call", req)
	stop()
	cancel()

	tc := storage.ToolCall{Name: name, Arguments: args, Duration: time.Since(start)}
	switch {
	case err != nil:
		tc.Error = err.Error()
	case res != nil:
		if b, merr := json.Marshal(res); merr != nil {
			tc.Error = "gateway: cannot encode the tool result: " + merr.Error()
		} else {
			tc.Result = b
		}
		if ctr, ok := res.(*mcp.CallToolResult); ok {
			tc.IsError = ctr.IsError
		}
	}
	r.mu.Lock()
	r.calls[i] = record{Call: Call{At: at, ToolCall: tc}, done: true}
	r.mu.Unlock()
	return res, err
}
