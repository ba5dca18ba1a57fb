// Package memsandbox is an in-memory [sandbox.Sandbox] for tests and
// examples: an image is the name of a registered Go function (an [Agent]),
// and an instance is that function running in goroutines of the host process,
// with a private environment, a private file map, bounded logs and a network
// that reaches only the run's MCP URL.
//
// It keeps the semantics of promises P1, P2, P3 and P13 of DESIGN.md as the
// sandboxtest conformance suite pins them, so that code above the sandbox can
// be tested without containers.
//
// memsandbox is a test fake, NOT an isolation boundary. The agent is trusted
// Go code in the host's address space: it can ignore [Env] and use the
// process's own network, files and memory. Never run untrusted code with it;
// use a container driver (ocisandbox, cfsandbox) for that.
//
// # Limits
//
// Limits.Timeout cancels the agent's context and every process it started
// with [Env.Go]; Limits.PIDs caps the agent plus its processes;
// Limits.LogBytes bounds each of stdout and stderr; Limits.MemoryBytes bounds
// the bytes held in the instance's files. CPUs is not enforced.
//
// # Errors
//
// Start wraps [sandbox.ErrInvalidSpec] and [sandbox.ErrImageNotFound]. Egress
// to anything but the MCP URL, and every DNS lookup, fail with an error
// wrapping [ErrEgressDenied].
package memsandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/compatool/compatool/sandbox"
)

// ErrEgressDenied reports an attempt to reach anything but the run's MCP URL.
var ErrEgressDenied = errors.New("memsandbox: egress denied")

// An Agent is an image: it runs as the instance's main process and returns
// its exit code. It must return once ctx is done. A panic is recovered and
// reported as exit code 2 with the panic and its stack on stderr.
type Agent func(ctx context.Context, env *Env) int

// Options configure a [Sandbox]. The zero value gives the defaults.
type Options struct {
	// Logger receives lifecycle events (never environment values). Nil
	// discards them.
	Logger *slog.Logger
	// DestroyGrace bounds how long Destroy waits for the agent and its
	// processes to return after cancelling them. Zero means 5s.
	DestroyGrace time.Duration
}

// Sandbox runs registered agents. It is safe for concurrent use.
type Sandbox struct {
	log   *slog.Logger
	grace time.Duration
	seq   atomic.Uint64

	mu     sync.Mutex
	agents map[string]Agent
	live   map[string]struct{}
}

var _ sandbox.Sandbox = (*Sandbox)(nil)

// New returns a Sandbox that runs agents[image] for Spec.Image; an image not
// in the map fails with [sandbox.ErrImageNotFound]. opts may be nil.
func New(agents map[string]Agent, opts *Options) *Sandbox {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DestroyGrace <= 0 {
		o.DestroyGrace = 5 * time.Second
	}
	return &Sandbox{log: o.Logger, grace: o.DestroyGrace, agents: maps.Clone(agents), live: map[string]struct{}{}}
}

// Register makes a available as image, replacing any agent of that name.
// Instances already started keep their agent.
func (s *Sandbox) Register(image string, a Agent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agents == nil {
		s.agents = map[string]Agent{}
	}
	s.agents[image] = a
}

// Live returns, sorted, the ids of instances that still hold resources: not
// yet destroyed, or destroyed while their goroutines have not yet returned.
func (s *Sandbox) Live() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.live))
}

// Start starts spec's agent in a new instance whose id is the RunID followed
// by a sequence number. The agent sees spec.Env plus [sandbox.EnvMCPURL] set
// to spec.MCPURL, which its [Env.HTTPClient] can reach.
func (s *Sandbox) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("memsandbox: start: %w", err)
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("memsandbox: %w", err)
	}
	s.mu.Lock()
	agent, ok := s.agents[spec.Image]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: memsandbox has no agent registered as %q; pass it to New or call Register",
			sandbox.ErrImageNotFound, spec.Image)
	}
	u, _ := url.Parse(spec.MCPURL) // Validate checked it.
	limits := spec.Limits.WithDefaults()
	vars := maps.Clone(spec.Env)
	if vars == nil {
		vars = map[string]string{}
	}
	vars[sandbox.EnvMCPURL] = spec.MCPURL

	env := &Env{
		vars:      vars,
		files:     map[string][]byte{},
		conns:     map[*conn]struct{}{},
		limits:    limits,
		mcpScheme: u.Scheme,
		mcpAddr:   hostPort(u),
		stdout:    sandbox.NewLogBuffer(limits.LogBytes),
		stderr:    sandbox.NewLogBuffer(limits.LogBytes),
		procs:     1,
	}
	env.ctx, env.cancel = context.WithTimeout(context.Background(), limits.Timeout)
	env.transport = &http.Transport{DialContext: env.DialContext, ForceAttemptHTTP2: true}
	inst := &instance{s: s, id: fmt.Sprintf("%s-%d", spec.RunID, s.seq.Add(1)), env: env, done: make(chan struct{})}

	s.mu.Lock()
	s.live[inst.id] = struct{}{}
	s.mu.Unlock()
	// At the deadline or Destroy, Wait returns at once even if the agent is
	// slow to notice.
	context.AfterFunc(env.ctx, func() { inst.finish(killed(env.ctx)) })
	env.wg.Add(1)
	go func() {
		defer env.exited()
		code := runAgent(agent, env)
		if env.ctx.Err() != nil {
			inst.finish(killed(env.ctx))
		} else {
			inst.finish(sandbox.Exit{Code: code, Reason: "exited"})
		}
	}()
	s.log.Debug("memsandbox: instance started", "instance", inst.id, "image", spec.Image)
	return inst, nil
}

func (s *Sandbox) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, id)
}

func killed(ctx context.Context) sandbox.Exit {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return sandbox.Exit{Code: -1, TimedOut: true, Reason: "killed at deadline"}
	}
	return sandbox.Exit{Code: -1, Reason: "killed by Destroy"}
}

func runAgent(a Agent, env *Env) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(env.stderr, "panic: %v\n\n%s", r, debug.Stack())
			code = 2
		}
	}()
	return a(env.ctx, env)
}

type instance struct {
	s   *Sandbox
	id  string
	env *Env

	once sync.Once
	done chan struct{}
	exit sandbox.Exit // set before done is closed

	destroyMu sync.Mutex
	destroyed bool
}

func (i *instance) finish(e sandbox.Exit) {
	i.once.Do(func() {
		i.exit = e
		close(i.done)
	})
}

func (i *instance) ID() string { return i.id }

func (i *instance) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-i.done:
		return i.exit, nil
	default:
	}
	select {
	case <-i.done:
		return i.exit, nil
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
}

func (i *instance) Logs() sandbox.Logs {
	out, outCut := i.env.stdout.Snapshot()
	errs, errCut := i.env.stderr.Snapshot()
	return sandbox.Logs{Stdout: out, Stderr: errs, Truncated: outCut || errCut}
}

// Destroy cancels the agent and its processes, drops the instance's files,
// environment and connections, and waits up to Options.DestroyGrace for the
// goroutines to return; it does not give up earlier when ctx is done.
func (i *instance) Destroy(context.Context) error {
	i.destroyMu.Lock()
	defer i.destroyMu.Unlock()
	if i.destroyed {
		return nil
	}
	i.destroyed = true
	i.env.destroy()

	returned := make(chan struct{})
	go func() {
		i.env.wg.Wait()
		i.s.forget(i.id)
		close(returned)
	}()
	t := time.NewTimer(i.s.grace)
	defer t.Stop()
	select {
	case <-returned:
		i.s.log.Debug("memsandbox: instance destroyed", "instance", i.id)
		return nil
	case <-t.C:
		i.s.log.Warn("memsandbox: instance goroutines outlived Destroy", "instance", i.id)
		return fmt.Errorf("memsandbox: destroy %s: its agent or processes did not return within %v of cancellation; make them return when their ctx is done (the instance stays in Live until they do)",
			i.id, i.s.grace)
	}
}

// Env is an instance's view of its environment, handed to its [Agent]. Its
// methods are safe for concurrent use.
type Env struct {
	// ctx is the instance's life, not a request's: it ends at the deadline or
	// Destroy and is what every process of the instance runs under.
	ctx       context.Context
	cancel    context.CancelFunc
	limits    sandbox.Limits
	mcpScheme string
	mcpAddr   string
	transport *http.Transport
	stdout    *sandbox.LogBuffer
	stderr    *sandbox.LogBuffer
	wg        sync.WaitGroup // the agent and its processes

	mu        sync.Mutex
	destroyed bool
	vars      map[string]string
	files     map[string][]byte
	fileBytes int64
	conns     map[*conn]struct{}
	procs     int64
}

// Getenv returns the value of the environment variable key, or "".
func (e *Env) Getenv(key string) string {
	v, _ := e.LookupEnv(key)
	return v
}

// LookupEnv returns the value of the environment variable key and whether it
// is set.
func (e *Env) LookupEnv(key string) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.vars[key]
	return v, ok
}

// Environ returns the environment as sorted "key=value" strings.
func (e *Env) Environ() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for k, v := range e.vars {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// HTTPClient returns a client that reaches only the run's MCP URL (same
// scheme, host and port): a request anywhere else, including a redirect
// target, fails with [ErrEgressDenied] before anything is dialled. It ignores
// proxy settings.
func (e *Env) HTTPClient() *http.Client {
	return &http.Client{Transport: egressTransport{e}}
}

type egressTransport struct{ e *Env }

func (t egressTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.EqualFold(r.URL.Scheme, t.e.mcpScheme) || !strings.EqualFold(hostPort(r.URL), t.e.mcpAddr) {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("%w: %s://%s is not the run's MCP endpoint %s://%s",
			ErrEgressDenied, r.URL.Scheme, r.URL.Host, t.e.mcpScheme, t.e.mcpAddr)
	}
	return t.e.transport.RoundTrip(r)
}

// DialContext connects to addr if it is the MCP URL's host:port over TCP;
// anything else fails with [ErrEgressDenied] without dialling.
func (e *Env) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: %s is not allowed; only tcp to %s is", ErrEgressDenied, network, e.mcpAddr)
	}
	if host, port, err := net.SplitHostPort(addr); err != nil || !strings.EqualFold(net.JoinHostPort(host, port), e.mcpAddr) {
		return nil, fmt.Errorf("%w: %s is not the run's MCP endpoint %s", ErrEgressDenied, addr, e.mcpAddr)
	}
	if e.isDestroyed() {
		return nil, fmt.Errorf("memsandbox: dial %s: %w", addr, sandbox.ErrDestroyed)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", e.mcpAddr)
	if err != nil {
		return nil, err
	}
	tc := &conn{Conn: c, e: e}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.destroyed {
		c.Close()
		return nil, fmt.Errorf("memsandbox: dial %s: %w", addr, sandbox.ErrDestroyed)
	}
	e.conns[tc] = struct{}{}
	return tc, nil
}

// conn is tracked so that Destroy can cut every connection of the instance.
type conn struct {
	net.Conn
	e *Env
}

func (c *conn) Close() error {
	c.e.mu.Lock()
	delete(c.e.conns, c)
	c.e.mu.Unlock()
	return c.Conn.Close()
}

// LookupHost always fails with [ErrEgressDenied]: the sandbox has no DNS.
func (e *Env) LookupHost(_ context.Context, host string) ([]string, error) {
	return nil, fmt.Errorf("%w: lookup %s: the sandbox has no DNS", ErrEgressDenied, host)
}

// WriteFile stores a copy of data as the instance's file name. The bytes of
// all files together may not exceed Limits.MemoryBytes.
func (e *Env) WriteFile(name string, data []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.destroyed {
		return fmt.Errorf("memsandbox: write %s: %w", name, sandbox.ErrDestroyed)
	}
	if name == "" {
		return &fs.PathError{Op: "write", Path: name, Err: fs.ErrInvalid}
	}
	name = path.Clean(name)
	total := e.fileBytes - int64(len(e.files[name])) + int64(len(data))
	if total > e.limits.MemoryBytes {
		return fmt.Errorf("memsandbox: write %s: files would hold %d bytes, over Limits.MemoryBytes (%d)", name, total, e.limits.MemoryBytes)
	}
	e.files[name] = slices.Clone(data)
	e.fileBytes = total
	return nil
}

// ReadFile returns a copy of the instance's file name, or an error matching
// fs.ErrNotExist.
func (e *Env) ReadFile(name string) ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, ok := e.files[path.Clean(name)]
	if !ok || name == "" {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return slices.Clone(b), nil
}

// Stdout returns the instance's standard output; what exceeds
// Limits.LogBytes is discarded. Writes never fail.
func (e *Env) Stdout() io.Writer { return e.stdout }

// Stderr is like [Env.Stdout] for standard error.
func (e *Env) Stderr() io.Writer { return e.stderr }

// Go starts f as a process of the instance: it may outlive the agent, its ctx
// ends at the deadline or Destroy, and Destroy waits for it to return. It
// fails if the instance is killed or would exceed Limits.PIDs (the agent
// counts as one). A panic in f is recovered and written to stderr.
func (e *Env) Go(f func(ctx context.Context)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.destroyed || e.ctx.Err() != nil {
		return fmt.Errorf("memsandbox: start process: instance is killed: %w", sandbox.ErrDestroyed)
	}
	if e.procs >= e.limits.PIDs {
		return fmt.Errorf("memsandbox: start process: Limits.PIDs (%d) reached", e.limits.PIDs)
	}
	e.procs++
	e.wg.Add(1)
	go func() {
		defer e.exited()
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintf(e.stderr, "panic: %v\n\n%s", r, debug.Stack())
			}
		}()
		f(e.ctx)
	}()
	return nil
}

func (e *Env) exited() {
	e.mu.Lock()
	e.procs--
	e.mu.Unlock()
	e.wg.Done()
}

func (e *Env) isDestroyed() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.destroyed
}

// destroy cancels every process and drops the instance's state at once,
// without waiting for the processes to return.
func (e *Env) destroy() {
	e.mu.Lock()
	e.destroyed = true
	e.vars, e.files, e.fileBytes = nil, nil, 0
	conns := e.conns
	e.conns = nil
	e.mu.Unlock()
	e.cancel()
	for c := range conns {
		c.Conn.Close()
	}
	e.transport.CloseIdleConnections()
}

func hostPort(u *url.URL) string {
	port := u.Port()
	switch {
	case port != "":
	case strings.EqualFold(u.Scheme, "https"):
		port = "443"
	default:
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}
