// Package compatool is the harness: the one place that knows the order of a
// run. A host program builds a [Harness] from the drivers it chooses (a
// sandbox, a metadata and a transcript store, a meter), registers task
// environments, and then submits agents, executes their runs on a bounded
// worker pool, and reads results and transcripts through an [auth.Scope].
//
// A run goes: token minted → gateway opened → sandbox started with
// COMPATOOL_MCP_URL, COMPATOOL_MCP_TOKEN, COMPATOOL_RUN_ID and COMPATOOL_GOAL
// → wait for exit, deadline or cancellation → sandbox destroyed (in a defer
// that survives panics) → token revoked → graded → transcript redacted and
// stored → result stored → usage recorded. Every state change is persisted
// (queued → running → finished | failed | cancelled) so that a harness
// started on the same stores after a crash fails the runs left running and
// resumes the queued ones.
//
// The harness keeps, at the pipeline level, every promise of DESIGN.md:
// P1 and P3 through the sandbox it drives, P8 by redacting before the first
// persisted byte, P9 with [Harness.Publish], P4 with [Harness.Erase], P11 by
// reading only through a scope, P12 by writing an audit record before any
// staff read returns data, P13 by minting per-run credentials that die with
// the run.
//
// # Errors
//
// Bad input wraps [ErrInvalid] and changes nothing. Reads of ids that do not
// exist or belong to another organisation wrap [storage.ErrNotFound]. A staff
// scope used to write wraps [auth.ErrForbidden].
package compatool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/billing"
	"github.com/compatool/compatool/internal/gateway"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
)

// ErrInvalid reports bad input; nothing was changed.
var ErrInvalid = errors.New("compatool: invalid input")

// ErrClosed reports a call on a harness that was closed.
var ErrClosed = errors.New("compatool: harness closed")

// Options configure a [Harness]. Metadata, Transcripts, Sandbox and Keys are
// required.
type Options struct {
	Metadata    storage.MetadataStore
	Transcripts storage.TranscriptStore
	Sandbox     sandbox.Sandbox
	// Keys seals private task content (P6).
	Keys *envelope.Keyring
	// Meter records usage; nil records none.
	Meter billing.Meter
	// Redactor defaults to redact.Default.
	Redactor redact.Redactor
	// Environments maps a task's Environment name to its implementation.
	Environments map[string]Environment
	// Workers bounds the runs executing at once; default 4.
	Workers int
	// Limits bound each run's sandbox; zero fields take
	// sandbox.DefaultLimits.
	Limits sandbox.Limits
	// RequireDigest refuses images that are not digest-pinned
	// ("name@sha256:<64 hex>" or "sha256:<64 hex>"). Container sandboxes
	// need it.
	RequireDigest bool
	// MaxGoalBytes bounds a task's goal; default 64 KiB.
	MaxGoalBytes int
	// MaxTasks bounds the tasks of one submission; default 1000.
	MaxTasks int
	// GatewayURL is the base URL under which the host serves
	// [Harness.GatewayHandler] for sandboxes to reach. Empty means the
	// harness serves the gateway itself on a loopback port.
	GatewayURL string
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Harness runs submissions. Its methods are safe for concurrent use.
type Harness struct {
	opts     Options
	log      *slog.Logger
	gw       *gateway.Host
	gwURL    string
	gwServer *http.Server

	queue   *queue
	changed *broadcast

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc
	running map[storage.RunID]context.CancelCauseFunc
	workers sync.WaitGroup
}

// New checks opts and returns a harness that is not yet executing runs;
// call [Harness.Start].
func New(opts Options) (*Harness, error) {
	var missing []string
	if opts.Metadata == nil {
		missing = append(missing, "Metadata")
	}
	if opts.Transcripts == nil {
		missing = append(missing, "Transcripts")
	}
	if opts.Sandbox == nil {
		missing = append(missing, "Sandbox")
	}
	if opts.Keys == nil {
		missing = append(missing, "Keys")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("compatool: Options.%s required", strings.Join(missing, ", Options."))
	}
	if opts.Redactor == nil {
		opts.Redactor = redact.Default
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.MaxGoalBytes <= 0 {
		opts.MaxGoalBytes = 64 << 10
	}
	if opts.MaxTasks <= 0 {
		opts.MaxTasks = 1000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Limits = opts.Limits.WithDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Harness{
		opts:    opts,
		log:     log,
		gw:      gateway.NewHost(&gateway.Options{Logger: log, Now: opts.Now}),
		gwURL:   strings.TrimSuffix(opts.GatewayURL, "/"),
		queue:   newQueue(),
		changed: newBroadcast(),
		running: map[storage.RunID]context.CancelCauseFunc{},
	}
	return h, nil
}

// GatewayHandler serves the runs' MCP gateways under /runs/{run}/mcp. A host
// that sets Options.GatewayURL mounts it there.
func (h *Harness) GatewayHandler() http.Handler { return h.gw }

// Start recovers from a previous crash — runs left running are failed with an
// infrastructure reason and the sandbox driver's leftovers are reaped — then
// queues the runs left queued and starts the workers. ctx bounds recovery
// only.
func (h *Harness) Start(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrClosed
	}
	if h.started {
		return errors.New("compatool: harness already started")
	}
	if h.gwURL == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("compatool: listen for the MCP gateway: %w", err)
		}
		h.gwURL = "http://" + ln.Addr().String()
		h.gwServer = &http.Server{Handler: h.gw, ReadHeaderTimeout: 10 * time.Second}
		go h.gwServer.Serve(ln)
	}
	if err := h.recover(ctx); err != nil {
		return err
	}
	base, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	for range h.opts.Workers {
		h.workers.Add(1)
		go h.work(base)
	}
	h.started = true
	return nil
}

func (h *Harness) recover(ctx context.Context) error {
	if r, ok := h.opts.Sandbox.(sandbox.Reaper); ok {
		if err := r.Reap(ctx); err != nil {
			return fmt.Errorf("compatool: reap sandboxes left by a previous host: %w", err)
		}
	}
	err := h.eachRun(ctx, storage.RunRunning, func(r storage.Run) error {
		now := h.opts.Now()
		r.State, r.FinishedAt = storage.RunFailed, now
		r.Result = &storage.Result{Failure: storage.FailureInfrastructure, Detail: "the host stopped while the run executed; its sandbox was reaped"}
		return h.opts.Metadata.UpdateRun(ctx, auth.InternalScope(r.Org), r)
	})
	if err != nil {
		return fmt.Errorf("compatool: fail runs left running: %w", err)
	}
	err = h.eachRun(ctx, storage.RunQueued, func(r storage.Run) error {
		h.queue.push(queued{run: r.ID, org: r.Org})
		return nil
	})
	if err != nil {
		return fmt.Errorf("compatool: requeue runs: %w", err)
	}
	return nil
}

func (h *Harness) eachRun(ctx context.Context, st storage.RunState, f func(storage.Run) error) error {
	return eachPage(func(p storage.Page) ([]storage.Run, error) { return h.opts.Metadata.RunsInState(ctx, st, p) }, f)
}

// eachPage calls f on every run of a paged listing.
func eachPage(list func(storage.Page) ([]storage.Run, error), f func(storage.Run) error) error {
	p := storage.Page{Limit: storage.MaxPageLimit}
	for {
		runs, err := list(p)
		if err != nil {
			return err
		}
		for _, r := range runs {
			if err := f(r); err != nil {
				return err
			}
		}
		if len(runs) < p.N() {
			return nil
		}
		p.After = string(runs[len(runs)-1].ID)
	}
}

// errShutdown is the cause given to runs cancelled by Close.
var errShutdown = errors.New("the host shut down while the run executed")

// Close stops taking runs from the queue and waits for the runs in flight to
// finish. When ctx is done first, the runs in flight are cancelled (their
// sandboxes destroyed, their state failed with an infrastructure reason) and
// Close waits for that. Runs still queued stay queued for the next Start.
func (h *Harness) Close(ctx context.Context) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.mu.Unlock()
	h.queue.close()
	done := make(chan struct{})
	go func() { h.workers.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		h.mu.Lock()
		for _, cancel := range h.running {
			cancel(errShutdown)
		}
		h.mu.Unlock()
		<-done
	}
	if h.cancel != nil {
		h.cancel()
	}
	if h.gwServer != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err = errors.Join(err, h.gwServer.Shutdown(sctx))
	}
	return err
}

func newID(prefix string) string {
	var b [8]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s_%013x%s", prefix, time.Now().UnixMilli(), hex.EncodeToString(b[:]))
}

// queued is a run waiting for a worker.
type queued struct {
	run storage.RunID
	org auth.OrgID
}

// queue is an unbounded FIFO of runs; submission never blocks on workers.
type queue struct {
	mu     sync.Mutex
	items  []queued
	wake   chan struct{}
	closed bool
}

func newQueue() *queue { return &queue{wake: make(chan struct{}, 1)} }

func (q *queue) push(items ...queued) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.items = append(q.items, items...)
	q.signal()
}

// signal wakes one waiting worker; q.mu is held.
func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop returns the next run, or false once the queue is closed.
func (q *queue) pop() (queued, bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return queued{}, false
		}
		if len(q.items) > 0 {
			it := q.items[0]
			q.items = q.items[1:]
			if len(q.items) > 0 {
				q.signal() // pass the wake-up on to another worker
			}
			q.mu.Unlock()
			return it, true
		}
		q.mu.Unlock()
		<-q.wake
	}
}

func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.wake)
	}
}

// broadcast wakes every waiter when something changed.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcast) notify() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}
