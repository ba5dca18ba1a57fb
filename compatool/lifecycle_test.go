package compatool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/retention"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
)

// reaper counts the harness's calls to Reap.
type reaper struct {
	sandbox.Sandbox
	calls atomic.Int32
}

func (r *reaper) Reap(context.Context) error { r.calls.Add(1); return nil }

// TestRecoverAfterCrash: a harness started on the stores of one that
// crashed fails the runs left running (infrastructure), reaps sandboxes and
// executes the runs left queued.
func TestRecoverAfterCrash(t *testing.T) {
	f := newFixture(t, 3, nil)
	ctx := context.Background()
	crashed, err := compatool.New(f.opts) // never started: it "crashed" after Submit
	if err != nil {
		t.Fatal(err)
	}
	sub, err := crashed.Submit(ctx, f.principal("org_a", "org:admin", false), compatool.Submission{AgentName: "a", Image: imgScripted, Tasks: f.tasks})
	if err != nil {
		t.Fatal(err)
	}
	runs, err := f.store.ListRuns(ctx, auth.InternalScope("org_a"), sub.ID, storage.Page{})
	if err != nil {
		t.Fatal(err)
	}
	runs[0].State = storage.RunRunning
	if err := f.store.UpdateRun(ctx, auth.InternalScope("org_a"), runs[0]); err != nil {
		t.Fatal(err)
	}

	opts := f.opts
	r := &reaper{Sandbox: f.sb}
	opts.Sandbox = r
	next, err := compatool.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer next.Close(ctx)
	got, err := next.Wait(ctx, f.scope("org_a"), sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.calls.Load() != 1 {
		t.Errorf("Reap called %d times at start, want 1", r.calls.Load())
	}
	for _, run := range got {
		if run.ID == runs[0].ID {
			if run.State != storage.RunFailed || run.Result.Failure != storage.FailureInfrastructure {
				t.Errorf("run left running: %s %+v, want failed (infrastructure)", run.State, run.Result)
			}
		} else if run.State != storage.RunFinished || !run.Result.Passed {
			t.Errorf("run left queued: %s %+v, want finished and passed", run.State, run.Result)
		}
	}
}

// TestHostPanic: a panic in the host's part of a run (here the grader) still
// destroys the sandbox and revokes the token, and fails the run as an
// infrastructure failure.
func TestHostPanic(t *testing.T) {
	f := newFixture(t, 0, func(o *compatool.Options) {
		o.Environments["panicky"] = compatool.EnvironmentFunc(func(ctx context.Context, task compatool.TaskContent) (*compatool.Session, error) {
			s, err := notes.Environment{}.Open(ctx, task)
			if err != nil {
				return nil, err
			}
			s.Grade = func(context.Context, []storage.ToolCall) (compatool.Grade, error) { panic("grader bug") }
			return s, nil
		})
	})
	content, _ := notes.Task(nil, []notes.Note{{Title: "a", Body: "b"}}, nil)
	if err := f.h.PutTask(context.Background(), compatool.TaskSpec{ID: "p", Environment: "panicky", Month: compatool.Month(base), Private: true, Content: content}); err != nil {
		t.Fatal(err)
	}
	f.goals["p"] = content.Goal
	sub := f.submit("org_a", imgScripted, []storage.TaskID{"p"})
	runs := f.wait("org_a", sub.ID)
	if r := runs[0]; r.State != storage.RunFailed || r.Result.Failure != storage.FailureInfrastructure || !strings.Contains(r.Result.Detail, "grader bug") {
		t.Errorf("run after a grader panic: %s %+v", r.State, r.Result)
	}
	if live := f.sb.Live(); len(live) != 0 {
		t.Errorf("sandbox not destroyed after a host panic: %v", live)
	}
	f.checkRuns(runs) // token revoked, transcript stored and redacted
}

// TestUpstreamCredentials: a task whose tool server is upstream gets its
// credentials from the gateway; the agent never sees them and they are
// redacted from the transcript even when the upstream echoes them.
func TestUpstreamCredentials(t *testing.T) {
	const cred = "upstream-credential-8f1c2a9d7e"
	var sawCred atomic.Int32
	f := newFixture(t, 0, func(o *compatool.Options) {
		o.Environments["remote"] = compatool.EnvironmentFunc(func(ctx context.Context, task compatool.TaskContent) (*compatool.Session, error) {
			s, err := notes.Environment{}.Open(ctx, task)
			if err != nil {
				return nil, err
			}
			srv := s.Server
			// A careless upstream that tells its credential to whoever asks.
			srv.AddTool(&mcp.Tool{Name: "server_info", InputSchema: json.RawMessage(`{"type":"object"}`)}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "connected with key " + cred}}}, nil
			})
			h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Api-Key") != cred {
					http.Error(w, "no key", http.StatusUnauthorized)
					return
				}
				sawCred.Add(1)
				h.ServeHTTP(w, r)
			}))
			return &compatool.Session{
				Upstream: &compatool.Upstream{URL: up.URL, Header: http.Header{"X-Api-Key": {cred}}},
				Grade:    s.Grade,
				Close:    func() error { up.Close(); return nil },
			}, nil
		})
	})
	var environ atomic.Value
	f.sb.Register("snoop", func(ctx context.Context, env *memsandbox.Env) int {
		environ.Store(strings.Join(env.Environ(), "\n"))
		if code := f.scriptedAgent(nil)(ctx, env); code != 0 {
			return code
		}
		cs, err := connect(ctx, f.rec.mustGet(env), env.HTTPClient())
		if err != nil {
			return 1
		}
		defer cs.Close()
		if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "server_info", Arguments: map[string]any{}}); err != nil {
			return 1
		}
		return 0
	})
	content, _ := notes.Task(nil, []notes.Note{{Title: "key", Body: "value"}}, nil)
	if err := f.h.PutTask(context.Background(), compatool.TaskSpec{ID: "r", Environment: "remote", Month: compatool.Month(base), Private: true, Content: content}); err != nil {
		t.Fatal(err)
	}
	f.goals["r"] = content.Goal
	sub := f.submit("org_a", "snoop", []storage.TaskID{"r"})
	runs := f.wait("org_a", sub.ID)
	if r := runs[0]; r.State != storage.RunFinished || !r.Result.Passed || r.Result.ToolCalls != 3 {
		t.Fatalf("upstream run: %s %+v", r.State, r.Result)
	}
	if sawCred.Load() == 0 {
		t.Fatal("the upstream never saw its credential")
	}
	if env, _ := environ.Load().(string); env == "" || strings.Contains(env, cred) {
		t.Errorf("agent environment %q holds the upstream credential or is empty", env)
	}
	tr, raw := f.transcript("org_a", runs[0].ID)
	if bytes.Contains(raw, []byte(cred)) {
		t.Error("stored transcript holds the upstream credential")
	}
	last := tr.Events[len(tr.Events)-1]
	for _, e := range tr.Events {
		if e.Kind == storage.EventToolCall {
			last = e
		}
	}
	// The gateway withholds an upstream answer that carries its credential;
	// the call itself is recorded.
	if last.ToolCall == nil || last.ToolCall.Name != "server_info" || !last.ToolCall.IsError {
		t.Errorf("the upstream's answer with the key reached the agent: %+v", last.ToolCall)
	}
	f.checkNoStoredSecret(append(f.checkRuns(runs), cred))
}

// TestPublish: transcripts are private by default; publication is opt-in
// per submission and can be withdrawn.
func TestPublish(t *testing.T) {
	f := newFixture(t, 2, nil)
	ctx := context.Background()
	sub := f.submit("org_a", imgScripted, f.tasks[:1])
	run := f.wait("org_a", sub.ID)[0].ID
	if _, _, err := f.h.PublicTranscript(ctx, run); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("default: PublicTranscript = %v, want ErrNotFound", err)
	}
	if err := f.h.Publish(ctx, f.scope("org_a"), sub.ID); err != nil {
		t.Fatal(err)
	}
	rc, _, err := f.h.PublicTranscript(ctx, run)
	if err != nil {
		t.Fatalf("after Publish: %v", err)
	}
	pub, _ := io.ReadAll(rc)
	rc.Close()
	if _, own := f.transcript("org_a", run); !bytes.Equal(pub, own) {
		t.Error("the public transcript differs from the stored one")
	}
	if err := f.h.Unpublish(ctx, f.scope("org_a"), sub.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.h.PublicTranscript(ctx, run); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("after Unpublish: %v, want ErrNotFound", err)
	}
	opted, err := f.h.Submit(ctx, f.principal("org_a", "org:admin", false), compatool.Submission{AgentName: "a", Image: imgScripted, Tasks: f.tasks[1:], Public: true})
	if err != nil {
		t.Fatal(err)
	}
	r := f.wait("org_a", opted.ID)[0]
	if rc, _, err := f.h.PublicTranscript(ctx, r.ID); err != nil {
		t.Errorf("opted-in at submission: %v", err)
	} else {
		rc.Close()
	}
}

// TestErase: erasure removes a submission's metadata, runs, results and
// transcripts, also while a run is in flight, and leaves no orphan.
func TestErase(t *testing.T) {
	f := newFixture(t, 2, nil)
	ctx := context.Background()
	a := f.scope("org_a")
	done := f.submit("org_a", imgScripted, f.tasks[:1])
	doneRun := f.wait("org_a", done.ID)[0].ID

	started := make(chan struct{}, 1)
	f.sb.Register("blocker", func(ctx context.Context, env *memsandbox.Env) int {
		f.rec.saw(env)
		started <- struct{}{}
		<-ctx.Done()
		return 0
	})
	inflight := f.submit("org_a", "blocker", f.tasks[1:])
	<-started
	runs, err := f.h.Runs(ctx, a, inflight.ID, storage.Page{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []storage.SubmissionID{done.ID, inflight.ID} {
		if err := f.h.Erase(ctx, a, id); err != nil {
			t.Fatalf("Erase(%s): %v", id, err)
		}
		if err := f.h.Erase(ctx, a, id); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("second Erase(%s): %v, want ErrNotFound", id, err)
		}
	}
	// Wait for the in-flight run's worker to finish writing.
	if err := f.h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, run := range []storage.RunID{doneRun, runs[0].ID} {
		if _, err := f.store.GetRun(ctx, a, run); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("run %s after Erase: %v", run, err)
		}
		if _, _, err := f.store.Get(ctx, a, run); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("transcript %s after Erase: %v", run, err)
		}
	}
	for _, st := range []storage.RunState{storage.RunQueued, storage.RunRunning, storage.RunFinished, storage.RunFailed, storage.RunCancelled} {
		if left, _ := f.store.RunsInState(ctx, st, storage.Page{}); len(left) != 0 {
			t.Errorf("%d %s runs left after erasing everything", len(left), st)
		}
	}
	if subs, _ := f.h.Submissions(ctx, a, storage.Page{}); len(subs) != 0 {
		t.Errorf("%d submissions left", len(subs))
	}
	if live := f.sb.Live(); len(live) != 0 {
		t.Errorf("sandboxes left: %v", live)
	}
}

// TestRetention: the sweeper archives transcripts after 12 months and
// retires private tasks after their month, publishing the plaintext; a
// second sweep does nothing; a retired task can no longer be submitted.
func TestRetention(t *testing.T) {
	f := newFixture(t, 1, nil)
	ctx := context.Background()
	sub := f.submit("org_a", imgScripted, f.tasks)
	run := f.wait("org_a", sub.ID)[0].ID
	sw := retention.Sweeper{Metadata: f.store, Transcripts: f.store, Keys: f.keys}

	endOfMonth := time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)
	if r, err := sw.Sweep(ctx, endOfMonth); err != nil || len(r.Archived)+len(r.Retired) != 0 {
		t.Fatalf("sweep within the month: %+v, %v; want nothing done", r, err)
	}
	nextMonth := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r, err := sw.Sweep(ctx, nextMonth)
	if err != nil || len(r.Retired) != 1 || len(r.Archived) != 0 {
		t.Fatalf("sweep next month: %+v, %v; want the task retired, nothing archived", r, err)
	}
	task, err := f.store.GetTask(ctx, f.tasks[0])
	if err != nil {
		t.Fatal(err)
	}
	var published compatool.TaskContent
	if err := json.Unmarshal(task.Published, &published); err != nil || published.Goal != f.goals[f.tasks[0]] || task.RetiredAt.IsZero() || task.Sealed != nil {
		t.Errorf("retired task: published %q, retired %v, sealed %d bytes", published.Goal, task.RetiredAt, len(task.Sealed))
	}
	if _, err := f.h.Submit(ctx, f.principal("org_a", "org:admin", false), compatool.Submission{AgentName: "a", Image: imgScripted, Tasks: f.tasks}); !errors.Is(err, compatool.ErrInvalid) {
		t.Errorf("submit against a retired task: %v, want ErrInvalid", err)
	}

	later := base.AddDate(1, 0, 1)
	r, err = sw.Sweep(ctx, later)
	if err != nil || len(r.Archived) != 1 || r.Archived[0] != run || len(r.Retired) != 0 {
		t.Fatalf("sweep after 12 months: %+v, %v; want run %s archived", r, err, run)
	}
	if r, err := sw.Sweep(ctx, later); err != nil || len(r.Archived)+len(r.Retired) != 0 {
		t.Errorf("second sweep: %+v, %v; want nothing done", r, err)
	}
	rc, info, err := f.h.Transcript(ctx, f.scope("org_a"), run)
	if err != nil || !info.Archived {
		t.Fatalf("archived transcript: %+v, %v", info, err)
	}
	rc.Close()
}

// TestSubmitBeforeStart: runs submitted before Start are queued twice (by
// Submit and by Start's recovery) and still execute exactly once.
func TestSubmitBeforeStart(t *testing.T) {
	f := newFixture(t, 4, nil)
	var mu sync.Mutex
	calls := map[string]int{}
	opts := f.opts
	opts.Sandbox = memsandbox.New(map[string]memsandbox.Agent{"counted": func(ctx context.Context, env *memsandbox.Env) int {
		mu.Lock()
		calls[env.Getenv(sandbox.EnvRunID)]++
		mu.Unlock()
		return f.scriptedAgent(nil)(ctx, env)
	}}, nil)
	store := &pairedReads{MetadataStore: f.store, reads: map[storage.RunID]chan struct{}{}, started: map[storage.RunID]int{}}
	opts.Metadata = store
	h, err := compatool.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sub, err := h.Submit(ctx, f.principal("org_a", "org:admin", false), compatool.Submission{AgentName: "a", Image: "counted", Tasks: f.tasks})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	runs, err := h.Wait(ctx, f.scope("org_a"), sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.State != storage.RunFinished || calls[string(r.ID)] != 1 || store.started[r.ID] != 1 {
			t.Errorf("run %s: %s, agent started %d times, marked running %d times; want finished, once", r.ID, r.State, calls[string(r.ID)], store.started[r.ID])
		}
	}
}

type pairedReads struct {
	storage.MetadataStore
	mu      sync.Mutex
	reads   map[storage.RunID]chan struct{}
	started map[storage.RunID]int
}

func (p *pairedReads) UpdateRun(ctx context.Context, s auth.Scope, r storage.Run) error {
	if r.State == storage.RunRunning {
		p.mu.Lock()
		p.started[r.ID]++
		p.mu.Unlock()
	}
	return p.MetadataStore.UpdateRun(ctx, s, r)
}

// GetRun reads the run, then holds the first reader of each run until a
// second reader has read it too (or a while has passed): a run claimed
// twice is then seen queued twice.
func (p *pairedReads) GetRun(ctx context.Context, s auth.Scope, id storage.RunID) (storage.Run, error) {
	r, err := p.MetadataStore.GetRun(ctx, s, id)
	p.mu.Lock()
	ch, second := p.reads[id]
	if !second {
		ch = make(chan struct{})
		p.reads[id] = ch
	} else if ch != nil {
		close(ch)
		p.reads[id] = nil
	}
	p.mu.Unlock()
	if !second {
		select {
		case <-ch:
		case <-time.After(300 * time.Millisecond):
		}
	}
	return r, err
}

// TestRewrapTasks: after a key rotation and RewrapTasks, every task opens
// with the new key alone.
func TestRewrapTasks(t *testing.T) {
	oldKey, newKey := make([]byte, 32), make([]byte, 32)
	newKey[0] = 1
	rotating, err := envelope.NewStaticKeys("old", map[string][]byte{"old": oldKey})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, 2, func(o *compatool.Options) { o.Keys = envelope.NewKeyring(rotating) })
	ctx := context.Background()
	// Rotate: the new key becomes current, the old one is still known.
	both, err := envelope.NewStaticKeys("new", map[string][]byte{"old": oldKey, "new": newKey})
	if err != nil {
		t.Fatal(err)
	}
	opts := f.opts
	opts.Keys = envelope.NewKeyring(both)
	h, err := compatool.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := h.RewrapTasks(ctx); err != nil || n != 2 {
		t.Fatalf("RewrapTasks = %d, %v; want 2", n, err)
	}
	onlyNew, err := envelope.NewStaticKeys("new", map[string][]byte{"new": newKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range f.tasks {
		task, err := f.store.GetTask(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := envelope.NewKeyring(onlyNew).Open(ctx, string(id), task.Sealed); err != nil {
			t.Errorf("task %s does not open with the new key alone: %v", id, err)
		}
	}
}
