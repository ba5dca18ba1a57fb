package compatool_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/billing/membilling"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/memstore"
)

// base is the fixtures' "now": the middle of November 2026.
var base = time.Date(2026, 11, 15, 12, 0, 0, 0, time.UTC)

// clock runs from base at real speed, so durations are real.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
	start  time.Time
}

func newClock() *clock { return &clock{start: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return base.Add(c.offset + time.Since(c.start))
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// seen is what an agent saw of its environment, recorded so that tests can
// replay the run's credentials after the run.
type seen struct {
	mcpURL, token, goal string
}

type recorder struct {
	mu   sync.Mutex
	runs map[string]seen
}

func (r *recorder) saw(env *memsandbox.Env) seen {
	s := seen{env.Getenv(sandbox.EnvMCPURL), env.Getenv(sandbox.EnvMCPToken), env.Getenv(sandbox.EnvGoal)}
	r.mu.Lock()
	r.runs[env.Getenv(sandbox.EnvRunID)] = s
	r.mu.Unlock()
	return s
}

func (r *recorder) mustGet(env *memsandbox.Env) seen {
	s, _ := r.get(storage.RunID(env.Getenv(sandbox.EnvRunID)))
	return s
}

func (r *recorder) get(run storage.RunID) (seen, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.runs[string(run)]
	return s, ok
}

type fixture struct {
	t      testing.TB
	h      *compatool.Harness
	opts   compatool.Options
	store  *memstore.Store
	sb     *memsandbox.Sandbox
	meter  *membilling.Meter
	authz  *devauth.Authority
	clock  *clock
	rec    *recorder
	goals  map[storage.TaskID]string
	tasks  []storage.TaskID
	keys   *envelope.Keyring
	agents map[string]memsandbox.Agent
}

// Agent images of the fixtures.
const (
	imgScripted = "scripted"
	imgLeaker   = "leaker"
	imgPanicker = "panicker"
	imgFailer   = "failer"
	imgSleeper  = "sleeper"
)

func newKeys(t testing.TB) *envelope.Keyring {
	kek := make([]byte, 32)
	rand.Read(kek)
	p, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": kek})
	if err != nil {
		t.Fatal(err)
	}
	return envelope.NewKeyring(p)
}

// newFixture builds a harness on the in-memory drivers with ntasks notes
// tasks. mod may change the options before the harness is made; the
// harness is started and closed with the test.
func newFixture(t testing.TB, ntasks int, mod func(*compatool.Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: newClock(), rec: &recorder{runs: map[string]seen{}}, goals: map[storage.TaskID]string{}}
	f.store = memstore.New(&memstore.Options{Now: f.clock.Now})
	f.meter = membilling.New()
	f.keys = newKeys(t)
	var err error
	f.authz, err = devauth.Generate(&devauth.Options{Now: f.clock.Now, StaffClaim: "compatool_staff"})
	if err != nil {
		t.Fatal(err)
	}
	f.agents = map[string]memsandbox.Agent{
		imgScripted: f.scriptedAgent(nil),
		imgLeaker:   f.leakerAgent,
		imgPanicker: func(ctx context.Context, env *memsandbox.Env) int {
			f.rec.saw(env)
			panic("agent bug")
		},
		imgFailer: func(ctx context.Context, env *memsandbox.Env) int {
			f.rec.saw(env)
			fmt.Fprintln(env.Stderr(), "giving up")
			return 3
		},
		imgSleeper: func(ctx context.Context, env *memsandbox.Env) int {
			f.rec.saw(env)
			<-ctx.Done()
			return 0
		},
	}
	f.sb = memsandbox.New(f.agents, nil)
	f.opts = compatool.Options{
		Metadata:     f.store,
		Transcripts:  f.store,
		Sandbox:      f.sb,
		Keys:         f.keys,
		Meter:        f.meter,
		Environments: map[string]compatool.Environment{notes.Name: notes.Environment{}},
		Workers:      8,
		Limits:       sandbox.Limits{Timeout: 5 * time.Second},
		Now:          f.clock.Now,
	}
	if mod != nil {
		mod(&f.opts)
	}
	f.h, err = compatool.New(f.opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range ntasks {
		id := storage.TaskID(fmt.Sprintf("notes-%03d", i))
		content, err := notes.Task(nil, []notes.Note{{Title: fmt.Sprintf("note %d", i), Body: fmt.Sprintf("body of note %d, kept private", i)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A goal unique to the task, so that a leak names its run.
		content.Goal += fmt.Sprintf(" Private marker %s-%d.", rand.Text(), i)
		if err := f.h.PutTask(ctx, compatool.TaskSpec{ID: id, Environment: notes.Name, Month: compatool.Month(base), Private: true, Content: content}); err != nil {
			t.Fatal(err)
		}
		f.goals[id] = content.Goal
		f.tasks = append(f.tasks, id)
	}
	if err := f.h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.h.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

// scriptedAgent solves its task; before, it waits at barrier (if any) so
// that tests can prove runs execute at the same time.
func (f *fixture) scriptedAgent(barrier *barrier) memsandbox.Agent {
	return func(ctx context.Context, env *memsandbox.Env) int {
		s := f.rec.saw(env)
		if barrier != nil && !barrier.arrive(ctx) {
			return 4
		}
		err := scripted.Solve(ctx, scripted.Config{MCPURL: s.mcpURL, Token: s.token, Goal: s.goal, HTTPClient: env.HTTPClient()})
		if err != nil {
			fmt.Fprintln(env.Stderr(), err)
			return 1
		}
		fmt.Fprintln(env.Stdout(), "done")
		return 0
	}
}

// leakerAgent tries every way to get its goal and token into the record:
// it prints them, passes them as tool arguments (plain and JSON-escaped),
// and makes the tool echo them back in results.
func (f *fixture) leakerAgent(ctx context.Context, env *memsandbox.Env) int {
	s := f.rec.saw(env)
	fmt.Fprintf(env.Stdout(), "my goal is %s and my token is %s\n", s.goal, s.token)
	fmt.Fprintf(env.Stderr(), "%q\n", s.goal)
	cs, err := connect(ctx, s, env.HTTPClient())
	if err != nil {
		fmt.Fprintln(env.Stderr(), err)
		return 1
	}
	defer cs.Close()
	calls := []any{
		map[string]any{"title": s.goal, "body": s.token},
		json.RawMessage(`{"title":"` + escapeAll(s.goal) + `","body":"x` + escapeAll(s.token) + `y"}`),
	}
	for _, args := range calls {
		if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add_note", Arguments: args}); err != nil {
			fmt.Fprintln(env.Stderr(), err)
			return 1
		}
	}
	// read_note echoes the body, so the token comes back in a result.
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "read_note", Arguments: map[string]any{"title": s.goal}}); err != nil {
		fmt.Fprintln(env.Stderr(), err)
		return 1
	}
	return 0
}

// escapeAll writes every character of s as a \uXXXX JSON escape.
func escapeAll(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0xffff {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\u%04x`, r)
	}
	return b.String()
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

func connect(ctx context.Context, s seen, hc *http.Client) (*mcp.ClientSession, error) {
	c := mcp.NewClient(&mcp.Implementation{Name: "test-agent", Version: "1"}, nil)
	return c.Connect(ctx, &mcp.StreamableClientTransport{
		Endpoint:             s.mcpURL,
		HTTPClient:           &http.Client{Transport: bearer{s.token, hc.Transport}},
		DisableStandaloneSSE: true,
		MaxRetries:           -1,
	}, nil)
}

type barrier struct {
	mu   sync.Mutex
	n    int
	done chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, done: make(chan struct{})} }

func (b *barrier) arrive(ctx context.Context) bool {
	b.mu.Lock()
	b.n--
	if b.n == 0 {
		close(b.done)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// principal authenticates a freshly issued devauth token, as a host would.
func (f *fixture) principal(org auth.OrgID, role string, staff bool) *auth.Principal {
	f.t.Helper()
	tok, err := f.authz.Issue(devauth.Claims{Subject: "user_" + string(org) + "_" + strings.TrimPrefix(role, "org:"), Org: org, Role: role, Staff: staff})
	if err != nil {
		f.t.Fatal(err)
	}
	p, err := f.authz.Authenticate(context.Background(), tok)
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) scope(org auth.OrgID) auth.Scope {
	f.t.Helper()
	s, err := auth.ScopeFor(f.principal(org, "org:member", false))
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *fixture) submit(org auth.OrgID, image string, tasks []storage.TaskID) storage.Submission {
	f.t.Helper()
	sub, err := f.h.Submit(context.Background(), f.principal(org, "org:admin", false), compatool.Submission{AgentName: image + " agent", Image: image, Tasks: tasks})
	if err != nil {
		f.t.Fatalf("Submit: %v", err)
	}
	return sub
}

func (f *fixture) wait(org auth.OrgID, sub storage.SubmissionID) []storage.Run {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runs, err := f.h.Wait(ctx, f.scope(org), sub)
	if err != nil {
		f.t.Fatalf("Wait: %v", err)
	}
	return runs
}

func (f *fixture) transcript(org auth.OrgID, run storage.RunID) (storage.Transcript, []byte) {
	f.t.Helper()
	rc, _, err := f.h.Transcript(context.Background(), f.scope(org), run)
	if err != nil {
		f.t.Fatalf("Transcript(%s): %v", run, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		f.t.Fatal(err)
	}
	var tr storage.Transcript
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&tr); err != nil {
		f.t.Fatalf("decode transcript: %v", err)
	}
	return tr, b
}
