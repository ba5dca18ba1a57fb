// Package gateway serves each run's MCP endpoint: the one network address an
// agent's sandbox can reach (DESIGN.md, run step 2.2).
//
// A [Host] is one http.Handler that serves the gateways of many runs under
// /runs/{runID}/mcp with the official MCP Go SDK's Streamable-HTTP transport.
// [Host.Open] registers a run's tool server and mints the run's bearer token;
// [Run.Close] revokes it. Every tools/call the agent makes is recorded, with
// its arguments exactly as received and the result as returned, for the
// grader and the transcript.
//
// It keeps promise P13 and the recording half of P8:
//
//   - the token is 32 bytes from crypto/rand, returned once and never kept:
//     the gateway holds only its SHA-256 and compares in constant time;
//   - a token opens exactly one run and nothing after [Run.Close]; a missing,
//     wrong, revoked or foreign token and an unknown run all get the same
//     401 answer, so a token holder learns nothing about other runs;
//   - for an upstream tool server the gateway adds the server's credentials
//     ([Upstream.Header]) on its own side; they never reach the agent, and a
//     response that would carry one is withheld;
//   - every tools/call is recorded in full ([Run.Calls]), up to
//     [Options.MaxCalls]; calls beyond the limit are refused, not executed.
//
// # Errors
//
// [Host.Open] wraps [ErrInvalid] for a bad run id or backend, [ErrRunExists]
// for a run id already open, and ctx.Err() when ctx ends first.
package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/compatool/compatool/storage"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

var (
	// ErrInvalid reports a run id or backend that Open cannot serve.
	ErrInvalid = errors.New("gateway: invalid run")
	// ErrRunExists reports an Open for a run id that is already open.
	ErrRunExists = errors.New("gateway: run already open")
)

// Defaults for zero fields of [Options].
const (
	DefaultMaxBodyBytes = 4 << 20
	DefaultMaxCalls     = 10000
)

// maxTokenBytes bounds the Authorization value hashed per request; real tokens
// are 43 bytes.
const maxTokenBytes = 256

// Options configure a [Host]. The zero value (or nil) uses the defaults.
type Options struct {
	// Logger receives the gateway's logs; nil discards them. Tokens and
	// upstream credentials are never logged.
	Logger *slog.Logger
	// MaxBodyBytes bounds each HTTP request body; 0 means
	// [DefaultMaxBodyBytes]. Larger requests get 413.
	MaxBodyBytes int64
	// MaxCalls bounds the tool calls recorded per run; 0 means
	// [DefaultMaxCalls]. Calls beyond it are answered with a tool error and
	// not executed.
	MaxCalls int
	// Now stamps [Call.At]; nil means time.Now. Durations always use the
	// monotonic clock.
	Now func() time.Time
}

// Host serves the gateways of many runs on one http.Handler under
// /runs/{runID}/mcp. It is safe for concurrent use.
type Host struct {
	log      *slog.Logger
	maxBody  int64
	maxCalls int
	now      func() time.Time

	mu   sync.RWMutex
	runs map[string]*Run
}

// NewHost returns a Host with no runs. opts may be nil.
func NewHost(opts *Options) *Host {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxCalls <= 0 {
		o.MaxCalls = DefaultMaxCalls
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Host{log: o.Logger, maxBody: o.MaxBodyBytes, maxCalls: o.MaxCalls, now: o.Now, runs: make(map[string]*Run)}
}

// Backend is the task's tool server for one run. Exactly one field is set.
type Backend struct {
	// Server is the task's in-process tool server, served directly. Make a
	// fresh one for each run: its state is what the grader sees, and each
	// Open adds to it a receiving middleware (which the SDK cannot remove)
	// that records the calls of this run's agent. Requests of any other
	// session, such as the host's own, pass through it untouched.
	Server *mcp.Server
	// Upstream is a tool server reached over Streamable HTTP. The gateway
	// connects at Open, lists its tools and forwards calls to them.
	Upstream *Upstream
}

// Open registers the gateway of run runID and mints its bearer token: 32
// bytes from crypto/rand, base64url without padding. Only the token's SHA-256
// is kept; the token is returned once and cannot be recovered. The agent
// reaches the run at [Run.Path] with "Authorization: Bearer <token>".
//
// For an [Upstream] backend Open connects to the tool server and lists its
// tools before returning, within ctx. runID must satisfy
// [storage.ValidID]. When Open fails nothing of the run is left.
func (h *Host) Open(ctx context.Context, runID string, b Backend) (*Run, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("gateway: open run %q: %w", runID, err)
	}
	if err := storage.ValidID(runID); err != nil {
		return nil, "", fmt.Errorf("%w: run id: %v", ErrInvalid, err)
	}
	if (b.Server == nil) == (b.Upstream == nil) {
		return nil, "", fmt.Errorf("%w: %q: set exactly one of Backend.Server and Backend.Upstream", ErrInvalid, runID)
	}
	if h.lookup(runID) != nil {
		return nil, "", fmt.Errorf("%w: %q; close it first", ErrRunExists, runID)
	}

	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, "", fmt.Errorf("gateway: mint token for run %q: %w", runID, err)
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])

	r := newRun(h, runID, sha256.Sum256([]byte(token)))
	server := b.Server
	if b.Upstream != nil {
		up, front, err := dialUpstream(ctx, h.log.With("run", runID), b.Upstream)
		if err != nil {
			r.cancel()
			return nil, "", fmt.Errorf("%w (run %q)", err, runID)
		}
		r.upstream, server = up, front
	}
	server.AddReceivingMiddleware(r.middleware)
	r.handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, &mcp.StreamableHTTPOptions{
		Logger:              h.log,
		MaxRequestBodyBytes: h.maxBody,
	})

	h.mu.Lock()
	_, dup := h.runs[runID]
	if !dup {
		h.runs[runID] = r
	}
	h.mu.Unlock()
	if dup {
		r.Close()
		return nil, "", fmt.Errorf("%w: %q; close it first", ErrRunExists, runID)
	}
	h.log.Info("gateway: run opened", "run", runID, "upstream", b.Upstream != nil)
	return r, token, nil
}

func (h *Host) lookup(runID string) *Run {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.runs[runID]
}

func (h *Host) remove(r *Run) {
	h.mu.Lock()
	if h.runs[r.id] == r {
		delete(h.runs, r.id)
	}
	h.mu.Unlock()
}

// ServeHTTP serves /runs/{runID}/mcp for open runs; any other path is 404.
// A request without the run's valid bearer token gets 401 with
// "WWW-Authenticate: Bearer" and the same body whether the run exists or not.
func (h *Host) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	runID, ok := runIDFromPath(req.URL.Path)
	if !ok {
		http.NotFound(w, req)
		return
	}
	r := h.lookup(runID)
	if !r.admits(req.Header.Get("Authorization")) {
		unauthorized(w)
		return
	}
	// The token is for the gateway alone: the tool server never sees it.
	req2 := *req
	req2.Header = req.Header.Clone()
	req2.Header.Del("Authorization")
	if req.Header.Get(sessionIDHeader) == "" {
		// A request without a session id may start a session. The SDK keeps
		// this context's values for the session's whole life, which is how
		// the middleware knows the session belongs to this run's agent.
		req2 = *req2.WithContext(context.WithValue(req.Context(), runKey{}, r))
	}
	r.handler.ServeHTTP(w, &req2)
}

const sessionIDHeader = "Mcp-Session-Id"

type runKey struct{}

// runIDFromPath parses "/runs/{runID}/mcp".
func runIDFromPath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, "/runs/")
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, "/mcp")
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

// dummyHash stands in for an unknown run so that its refusal costs what a
// known run's does.
var dummyHash = sha256.Sum256([]byte("compatool gateway: no such run"))

// admits reports whether authz carries r's token. r may be nil (unknown run).
func (r *Run) admits(authz string) bool {
	scheme, token, ok := strings.Cut(authz, " ")
	ok = ok && strings.EqualFold(scheme, "Bearer") && token != "" && len(token) <= maxTokenBytes
	if !ok {
		return false
	}
	want := &dummyHash
	if r != nil {
		want = &r.tokenHash
	}
	got := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1 && r != nil
}

func unauthorized(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("WWW-Authenticate", "Bearer")
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = w.Write([]byte("unauthorized: a valid bearer token for this run is required\n"))
}
