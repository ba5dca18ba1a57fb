package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Upstream is a task's tool server reached over Streamable HTTP. The gateway
// proxies its tools (not its prompts or resources); the tool list is read
// once, at Open.
type Upstream struct {
	// URL is the tool server's Streamable-HTTP MCP endpoint.
	URL string
	// Header holds the credentials the gateway adds to every request it
	// sends to URL's scheme and host (never to a redirect elsewhere). They
	// are never given to the agent: a result or error that contains one of
	// the values (or, for "Scheme value" forms, the value after the scheme)
	// is withheld. Values shorter than 8 bytes are not screened.
	Header http.Header
	// HTTPClient sends the requests; nil means a client with the standard
	// dial and TLS timeouts. Tool calls have no fixed timeout: they end with
	// the run ([Run.Close]).
	HTTPClient *http.Client
}

const (
	// maxUpstreamTools bounds the tool list read from an upstream server.
	maxUpstreamTools = 1000
	// minSecretBytes is the shortest credential value screened for; shorter
	// ones would match ordinary text.
	minSecretBytes = 8
)

var errUpstream = errors.New("gateway: the task's tool server failed to answer; the call may not have completed")

// upstream is a run's connection to its upstream tool server.
type upstream struct {
	cs      *mcp.ClientSession
	log     *slog.Logger
	secrets [][]byte
	// end aborts every HTTP exchange with the upstream still open, such as
	// the SDK's cancellation notices, which would otherwise wait on an
	// unresponsive server for ever.
	end context.CancelFunc
}

// dialUpstream connects to u within ctx and returns the connection and a
// front server that offers u's tools and forwards calls to them.
func dialUpstream(ctx context.Context, log *slog.Logger, u *Upstream) (*upstream, *mcp.Server, error) {
	target, err := url.Parse(u.URL)
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return nil, nil, fmt.Errorf("%w: Upstream.URL must be an absolute http(s) URL", ErrInvalid)
	}
	hc := &http.Client{}
	if u.HTTPClient != nil {
		c := *u.HTTPClient
		hc = &c
	}
	base := hc.Transport
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 32
		base = t
	}
	life, end := context.WithCancel(context.Background())
	hc.Transport = &credentialTransport{base: base, life: life, scheme: target.Scheme, host: target.Host, header: u.Header.Clone()}

	// Until Open returns, ctx bounds every exchange, including the SDK's
	// own clean-up after a cancelled call.
	stopDial := context.AfterFunc(ctx, end)

	up := &upstream{log: log, secrets: secretsOf(u.Header, target), end: end}
	client := mcp.NewClient(&mcp.Implementation{Name: "compatool-gateway"}, &mcp.ClientOptions{Capabilities: &mcp.ClientCapabilities{}})
	up.cs, err = client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: u.URL, HTTPClient: hc, DisableStandaloneSSE: true}, nil)
	if err != nil {
		stopDial()
		end()
		return nil, nil, up.fail(ctx, "connect to the upstream tool server", err)
	}
	front, err := up.front(ctx)
	if inTime := stopDial(); err == nil && !inTime {
		err = fmt.Errorf("gateway: connect to the upstream tool server: %w", context.Cause(ctx))
	}
	if err != nil {
		up.close()
		return nil, nil, err
	}
	return up, front, nil
}

// front builds the server the agent talks to: the upstream's identity and
// tools, with calls forwarded.
func (u *upstream) front(ctx context.Context) (*mcp.Server, error) {
	impl := &mcp.Implementation{Name: "compatool-gateway"}
	var instructions string
	if init := u.cs.InitializeResult(); init != nil {
		if init.ServerInfo != nil {
			impl = init.ServerInfo
		}
		instructions = init.Instructions
	}
	if b, _ := json.Marshal(impl); u.leaks(b) || u.leaks([]byte(instructions)) {
		return nil, errors.New("gateway: the upstream tool server's identity or instructions contain a credential from Upstream.Header; refusing to show them to the agent")
	}
	front := mcp.NewServer(impl, &mcp.ServerOptions{
		Instructions: instructions,
		Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}},
	})
	n := 0
	for t, err := range u.cs.Tools(ctx, nil) {
		if err != nil {
			return nil, u.fail(ctx, "list the upstream tools", err)
		}
		if n++; n > maxUpstreamTools {
			return nil, fmt.Errorf("gateway: the upstream tool server offers more than %d tools", maxUpstreamTools)
		}
		if b, _ := json.Marshal(t); u.leaks(b) {
			return nil, fmt.Errorf("gateway: upstream tool %q mentions a credential from Upstream.Header; refusing to show it to the agent", t.Name)
		}
		if err := addTool(front, t, u.forward); err != nil {
			return nil, err
		}
	}
	return front, nil
}

// addTool turns the SDK's panic on a malformed tool into an error.
func addTool(s *mcp.Server, t *mcp.Tool, h mcp.ToolHandler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("gateway: the upstream tool server offers a malformed tool: %v", p)
		}
	}()
	s.AddTool(t, h)
	return nil
}

// fail wraps a failure to reach the upstream, preferring ctx's error so that
// callers can test it with errors.Is.
func (u *upstream) fail(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("gateway: %s: %w", what, cerr)
	}
	if u.leaks([]byte(err.Error())) {
		return fmt.Errorf("gateway: %s: failed (the error mentions a credential and is withheld)", what)
	}
	return fmt.Errorf("gateway: %s: %w", what, err)
}

// forward calls the upstream tool with the agent's arguments as received.
func (u *upstream) forward(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	p := &mcp.CallToolParams{Name: req.Params.Name}
	if len(req.Params.Arguments) > 0 {
		p.Arguments = req.Params.Arguments
	}
	res, err := u.cs.CallTool(ctx, p)
	if err != nil {
		var werr *jsonrpc.Error
		if errors.As(err, &werr) && !u.leaks([]byte(werr.Message)) && !u.leaks(werr.Data) {
			return nil, &jsonrpc.Error{Code: werr.Code, Message: werr.Message, Data: werr.Data}
		}
		msg := err.Error()
		if u.leaks([]byte(msg)) {
			msg = "(withheld: it mentions a credential)"
		}
		u.log.Warn("gateway: upstream tool call failed", "tool", p.Name, "error", msg)
		return nil, errUpstream
	}
	if b, err := json.Marshal(res); err != nil || u.leaks(b) {
		u.log.Warn("gateway: upstream tool result withheld: it contains a credential or cannot be encoded", "tool", p.Name)
		return &mcp.CallToolResult{
			IsError: true,
			Content: []mcp.Content{&mcp.TextContent{Text: "gateway: the tool's result was withheld because it contains the tool server's credential"}},
		}, nil
	}
	return res, nil
}

func (u *upstream) leaks(b []byte) bool {
	for _, s := range u.secrets {
		if bytes.Contains(b, s) {
			return true
		}
	}
	return false
}

func (u *upstream) close() error {
	defer u.end()
	if err := u.cs.Close(); err != nil && !errors.Is(err, mcp.ErrConnectionClosed) {
		return fmt.Errorf("gateway: close the upstream session: %w", err)
	}
	return nil
}

// secretsOf lists the byte strings that must never reach the agent: every
// credential value, the part after the scheme of "Scheme value" forms, the
// URL's password, and their JSON-escaped forms.
func secretsOf(h http.Header, target *url.URL) [][]byte {
	var vals []string
	for _, vs := range h {
		for _, v := range vs {
			vals = append(vals, v)
			if _, rest, ok := strings.Cut(v, " "); ok {
				vals = append(vals, strings.TrimSpace(rest))
			}
		}
	}
	if p, ok := target.User.Password(); ok {
		vals = append(vals, p)
	}
	var out [][]byte
	for _, v := range vals {
		if len(v) < minSecretBytes {
			continue
		}
		out = append(out, []byte(v))
		if q, err := json.Marshal(v); err == nil && string(q[1:len(q)-1]) != v {
			out = append(out, q[1:len(q)-1])
		}
	}
	return out
}

// credentialTransport adds the upstream's credentials to requests for the
// upstream's scheme and host only, and ends every exchange when life ends.
type credentialTransport struct {
	base         http.RoundTripper
	life         context.Context
	scheme, host string
	header       http.Header
}

func (t *credentialTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	stop := context.AfterFunc(t.life, cancel)
	done := func() { stop(); cancel() }
	// A RoundTripper must not modify its request: work on a copy.
	if req.URL.Scheme == t.scheme && strings.EqualFold(req.URL.Host, t.host) {
		req = req.Clone(ctx)
		for k, vs := range t.header {
			req.Header[k] = append([]string(nil), vs...)
		}
	} else {
		req = req.WithContext(ctx)
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		done()
		return nil, err
	}
	resp.Body = &endingBody{ReadCloser: resp.Body, done: done}
	return resp, nil
}

// endingBody releases its exchange's context when closed.
type endingBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *endingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
