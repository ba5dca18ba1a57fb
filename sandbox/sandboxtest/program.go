package sandboxtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/compatool/compatool/sandbox"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// ProgramEnv is the environment variable from which a real-OS interpreter
// (the sandboxtest/agent binary) reads its [Program], as JSON.
const ProgramEnv = "COMPATOOL_TEST_PROGRAM"

// HeartbeatUserAgent prefixes the User-Agent of "heartbeat" requests; the
// marker follows it.
const HeartbeatUserAgent = "compatool-sandboxtest-heartbeat/"

const (
	netTimeout        = 2 * time.Second
	heartbeatInterval = 20 * time.Millisecond
)

// A Step is one instruction of a [Program]. Op selects what it does and which
// other fields it reads; every line it prints ends in "\n".
//
//   - "mcp_call": call tool Tool with Args at $COMPATOOL_MCP_URL with bearer
//     $COMPATOOL_MCP_TOKEN (MCP Streamable HTTP); print "result <text>".
//   - "dial": connect to Addr over Network (default "tcp"; Addr "" means the
//     host:port of $COMPATOOL_MCP_URL, printed as "mcp"); print
//     "REACHED <network> <addr>" or "blocked <network> <addr>". A UDP
//     connect that succeeds counts as reached; nothing is ever written.
//   - "lookup": resolve Host; print "REACHED lookup <host>" or
//     "blocked lookup <host>".
//   - "http_get": GET URL (a URL starting with "/" replaces the path of
//     $COMPATOOL_MCP_URL) with the bearer token, following redirects; print
//     "REACHED http <url>" on any HTTP response, else "blocked http <url>".
//   - "write_file": write Data to Path.
//   - "read_file": print "present <path> <data>" or "absent <path>".
//   - "print": write Text verbatim to Stream ("stdout", the default, or
//     "stderr").
//   - "env": print "env <Key>=<value>" or "env <Key> unset".
//   - "sleep": wait Duration, or until the program is cancelled.
//   - "spawn": start a child process running [{heartbeat, Text}]; it may
//     outlive this one.
//   - "heartbeat": until cancelled, every ~20ms GET $COMPATOOL_MCP_URL with
//     User-Agent [HeartbeatUserAgent]+Text and the bearer token.
//   - "attempt": try the privileged operation named Text (see
//     [Attempter]); print "REACHED attempt <Text>[ <Path>][ <Code>]" or
//     "blocked attempt …". A System that is no Attempter blocks them all.
//   - "fork_bomb": spawn children running [{heartbeat, Text}] until a spawn
//     fails (print "blocked fork_bomb") or 10000 did not (print
//     "REACHED fork_bomb").
//   - "double_fork": spawn a child that spawns [{heartbeat, Text}] and
//     exits, leaving an orphaned daemon.
//   - "panic": panic with Text.
//   - "exit": stop with exit code Code.
//
// A step that fails otherwise stops the program with exit code 1 and a line
// on stderr.
type Step struct {
	Op       string         `json:"op"`
	Tool     string         `json:"tool,omitempty"`
	Args     map[string]any `json:"args,omitempty"`
	Network  string         `json:"network,omitempty"`
	Addr     string         `json:"addr,omitempty"`
	Host     string         `json:"host,omitempty"`
	URL      string         `json:"url,omitempty"`
	Path     string         `json:"path,omitempty"`
	Data     string         `json:"data,omitempty"`
	Stream   string         `json:"stream,omitempty"`
	Text     string         `json:"text,omitempty"`
	Key      string         `json:"key,omitempty"`
	Duration time.Duration  `json:"duration,omitempty"`
	Code     int            `json:"code,omitempty"`
}

// A Program is an agent behaviour: steps run in order, and the program ends
// with exit code 0 after the last one unless a step ends it earlier.
type Program []Step

// System is what the interpreter needs from the environment it runs in:
// memsandbox supplies an in-memory one, container images the real OS
// ([OSSystem]). Implementations must be safe for concurrent use, since a
// spawned child runs alongside its parent.
type System interface {
	LookupEnv(key string) (string, bool)
	// HTTPClient returns the client for MCP and HTTP steps.
	HTTPClient() *http.Client
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
	WriteFile(name string, data []byte) error
	// ReadFile returns an error matching fs.ErrNotExist for a missing file.
	ReadFile(name string) ([]byte, error)
	Stdout() io.Writer
	Stderr() io.Writer
	// Spawn starts p in a new child process, which runs until p ends or the
	// sandbox kills it; it does not wait for it.
	Spawn(p Program) error
}

// Run interprets p on sys and returns its exit code. It honours ctx: a
// cancelled program stops at its current step with exit code 1.
func Run(ctx context.Context, sys System, p Program) int {
	for i, s := range p {
		if s.Op == "exit" {
			return s.Code
		}
		if err := step(ctx, sys, s); err != nil {
			fmt.Fprintf(sys.Stderr(), "sandboxtest: step %d (%s): %v\n", i, s.Op, err)
			return 1
		}
	}
	return 0
}

func step(ctx context.Context, sys System, s Step) error {
	out := sys.Stdout()
	switch s.Op {
	case "mcp_call":
		text, err := mcpCall(ctx, sys, s.Tool, s.Args)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "result %s\n", text)
		return err
	case "dial":
		network, addr, label := s.Network, s.Addr, s.Addr
		if network == "" {
			network = "tcp"
		}
		if addr == "" {
			u, err := mcpURL(sys)
			if err != nil {
				return err
			}
			addr, label = hostPort(u), "mcp"
		}
		dctx, cancel := context.WithTimeout(ctx, netTimeout)
		defer cancel()
		c, err := sys.DialContext(dctx, network, addr)
		if err == nil {
			c.Close()
		}
		return report(sys, err, network+" "+label)
	case "lookup":
		lctx, cancel := context.WithTimeout(ctx, netTimeout)
		defer cancel()
		_, err := sys.LookupHost(lctx, s.Host)
		return report(sys, err, "lookup "+s.Host)
	case "http_get":
		target := s.URL
		if strings.HasPrefix(target, "/") {
			u, err := mcpURL(sys)
			if err != nil {
				return err
			}
			u.Path, u.RawQuery = target, ""
			target = u.String()
		}
		return report(sys, httpGet(ctx, sys, target, ""), "http "+s.URL)
	case "write_file":
		return sys.WriteFile(s.Path, []byte(s.Data))
	case "read_file":
		b, err := sys.ReadFile(s.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			_, err = fmt.Fprintf(out, "absent %s\n", s.Path)
		case err == nil:
			_, err = fmt.Fprintf(out, "present %s %s\n", s.Path, b)
		}
		return err
	case "print":
		w := out
		switch s.Stream {
		case "", "stdout":
		case "stderr":
			w = sys.Stderr()
		default:
			return fmt.Errorf("unknown stream %q; use stdout or stderr", s.Stream)
		}
		_, err := io.WriteString(w, s.Text)
		return err
	case "env":
		v, ok := sys.LookupEnv(s.Key)
		var err error
		if ok {
			_, err = fmt.Fprintf(out, "env %s=%s\n", s.Key, v)
		} else {
			_, err = fmt.Fprintf(out, "env %s unset\n", s.Key)
		}
		return err
	case "sleep":
		t := time.NewTimer(s.Duration)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case "spawn":
		return sys.Spawn(Program{{Op: "heartbeat", Text: s.Text}})
	case "heartbeat":
		u, err := mcpURL(sys)
		if err != nil {
			return err
		}
		tick := time.NewTicker(heartbeatInterval)
		defer tick.Stop()
		for {
			// Failures are expected once the sandbox is being torn down;
			// the beat only has to stop when the process is killed.
			_ = httpGet(ctx, sys, u.String(), HeartbeatUserAgent+s.Text)
			select {
			case <-tick.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	case "attempt":
		return attempt(ctx, sys, s)
	case "fork_bomb":
		return forkBomb(sys, s.Text)
	case "double_fork":
		return sys.Spawn(Program{{Op: "spawn", Text: s.Text}})
	case "panic":
		panic(s.Text)
	default:
		return fmt.Errorf("unknown op %q", s.Op)
	}
}

// report prints whether a network attempt got through; the reason for a
// block goes to stderr, for whoever debugs a failing driver.
func report(sys System, err error, what string) error {
	if err != nil {
		fmt.Fprintf(sys.Stderr(), "blocked %s: %v\n", what, err)
		_, err = fmt.Fprintf(sys.Stdout(), "blocked %s\n", what)
		return err
	}
	_, err = fmt.Fprintf(sys.Stdout(), "REACHED %s\n", what)
	return err
}

func mcpURL(sys System) (*url.URL, error) {
	raw, _ := sys.LookupEnv(sandbox.EnvMCPURL)
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%s=%q is not an absolute URL", sandbox.EnvMCPURL, raw)
	}
	return u, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

func httpGet(ctx context.Context, sys System, target, userAgent string) error {
	ctx, cancel := context.WithTimeout(ctx, netTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	if userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	resp, err := bearerClient(sys).Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return resp.Body.Close()
}

func mcpCall(ctx context.Context, sys System, tool string, args map[string]any) (string, error) {
	u, err := mcpURL(sys)
	if err != nil {
		return "", err
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "compatool-sandboxtest", Version: "v1"}, nil)
	session, err := client.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint:             u.String(),
		HTTPClient:           bearerClient(sys),
		DisableStandaloneSSE: true,
		MaxRetries:           -1,
	}, nil)
	if err != nil {
		return "", fmt.Errorf("connect to MCP server: %w", err)
	}
	defer session.Close()
	res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		return "", fmt.Errorf("call tool %q: %w", tool, err)
	}
	var text strings.Builder
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			text.WriteString(t.Text)
		}
	}
	if res.IsError {
		return "", fmt.Errorf("tool %q failed: %s", tool, text.String())
	}
	return text.String(), nil
}

// bearerClient is sys's HTTP client with the run's token on every request.
func bearerClient(sys System) *http.Client {
	c := *sys.HTTPClient()
	token, _ := sys.LookupEnv(sandbox.EnvMCPToken)
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+token)
		return next.RoundTrip(r)
	})
	return &c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// OSSystem returns the [System] of the real operating system, for an
// interpreter running as a process inside a container. Its HTTP client
// ignores proxy settings, so every attempt goes straight at the network the
// sandbox gives it. Spawn re-executes the running binary in a new session,
// with the child's program in [ProgramEnv] and its standard streams
// detached, and does not wait for it.
func OSSystem() System { return osSystem{} }

type osSystem struct{}

func (osSystem) LookupEnv(key string) (string, bool) { return os.LookupEnv(key) }

// osTransport is shared so that connections are reused: a transport per
// request would leave its idle connection open for the life of the process.
var osTransport = &http.Transport{DialContext: (&net.Dialer{}).DialContext}

func (osSystem) HTTPClient() *http.Client { return &http.Client{Transport: osTransport} }

func (osSystem) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func (osSystem) LookupHost(ctx context.Context, host string) ([]string, error) {
	return net.DefaultResolver.LookupHost(ctx, host)
}

func (osSystem) WriteFile(name string, data []byte) error { return os.WriteFile(name, data, 0o600) }
func (osSystem) ReadFile(name string) ([]byte, error)     { return os.ReadFile(name) }
func (osSystem) Stdout() io.Writer                        { return os.Stdout }
func (osSystem) Stderr() io.Writer                        { return os.Stderr }

func (osSystem) Spawn(p Program) error {
	prog, err := json.Marshal(p)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ProgramEnv+"="+string(prog))
	cmd.SysProcAttr = detached()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("spawn child: %w", err)
	}
	return cmd.Process.Release()
}
