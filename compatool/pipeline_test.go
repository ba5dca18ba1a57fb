package compatool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
)

// TestPipeline runs more than 200 runs at once through memsandbox and then
// proves, for every run, the promises the pipeline keeps: its sandbox was
// destroyed, its token is dead, no stored byte holds a goal or a secret, and
// every tool call is in the stored transcript with its arguments in full.
func TestPipeline(t *testing.T) {
	const concurrent = 200
	f := newFixture(t, concurrent, func(o *compatool.Options) {
		o.Workers = concurrent + 40
		// Generous, so that only the sleepers reach it even on a loaded
		// 2-core machine under the race detector.
		o.Limits.Timeout = 20 * time.Second
	})
	f.sb.Register("barrier", f.scriptedAgent(newBarrier(concurrent)))

	// 200 scripted runs that can only proceed once all 200 are running,
	// split over two orgs, and 40 runs that end in every other way.
	type want struct {
		org   auth.OrgID
		state storage.RunState
		fail  storage.Failure
		check func(*testing.T, storage.Run)
	}
	subs := map[storage.SubmissionID]want{}
	add := func(org auth.OrgID, image string, tasks []storage.TaskID, w want) {
		w.org = org
		subs[f.submit(org, image, tasks).ID] = w
	}
	passed := func(t *testing.T, r storage.Run) {
		if !r.Result.Passed || r.Result.Score != 1 {
			t.Errorf("run %s: not passed: %+v", r.ID, r.Result)
		}
	}
	exitCode := func(code int) func(*testing.T, storage.Run) {
		return func(t *testing.T, r storage.Run) {
			if r.Result.Exit.Code != code {
				t.Errorf("run %s: exit code %d, want %d", r.ID, r.Result.Exit.Code, code)
			}
		}
	}
	add("org_a", "barrier", f.tasks[:120], want{state: storage.RunFinished, check: passed})
	add("org_b", "barrier", f.tasks[120:200], want{state: storage.RunFinished, check: passed})
	add("org_a", imgLeaker, f.tasks[:10], want{state: storage.RunFinished})
	add("org_b", imgPanicker, f.tasks[10:20], want{state: storage.RunFailed, fail: storage.FailureAgent, check: exitCode(2)})
	add("org_a", imgFailer, f.tasks[20:30], want{state: storage.RunFailed, fail: storage.FailureAgent, check: exitCode(3)})
	add("org_b", imgSleeper, f.tasks[30:35], want{state: storage.RunFailed, fail: storage.FailureAgent, check: func(t *testing.T, r storage.Run) {
		if !r.Result.Exit.TimedOut {
			t.Errorf("run %s: not timed out: %+v", r.ID, r.Result)
		}
	}})
	// Agents that are cancelled while they run.
	started := make(chan struct{}, 5)
	f.sb.Register("blocker", func(ctx context.Context, env *memsandbox.Env) int {
		f.rec.saw(env)
		started <- struct{}{}
		<-ctx.Done()
		return 0
	})
	cancelled := f.submit("org_a", "blocker", f.tasks[35:40])
	subs[cancelled.ID] = want{org: "org_a", state: storage.RunCancelled}
	for range 5 {
		<-started
	}
	if err := f.h.Cancel(context.Background(), f.scope("org_a"), cancelled.ID); err != nil {
		t.Fatal(err)
	}

	var all []storage.Run
	for id, w := range subs {
		runs := f.wait(w.org, id)
		for _, r := range runs {
			if r.State != w.state || r.Result == nil || r.Result.Failure != w.fail {
				t.Errorf("run %s: state %s result %+v, want %s/%q", r.ID, r.State, r.Result, w.state, w.fail)
				continue
			}
			if w.check != nil {
				w.check(t, r)
			}
		}
		all = append(all, runs...)
	}
	if len(all) != 240 {
		t.Fatalf("%d runs, want 240", len(all))
	}

	if live := f.sb.Live(); len(live) != 0 {
		t.Errorf("sandboxes still live after every run ended: %v", live)
	}
	secrets := f.checkRuns(all)
	f.checkNoStoredSecret(secrets)
}

// checkRuns checks every run's transcript and token, and returns every
// goal and token the runs had.
func (f *fixture) checkRuns(runs []storage.Run) []string {
	t := f.t
	var secrets []string
	for _, g := range f.goals {
		secrets = append(secrets, g)
	}
	for _, r := range runs {
		s, ok := f.rec.get(r.ID)
		if !ok {
			t.Errorf("run %s: the agent never ran", r.ID)
			continue
		}
		secrets = append(secrets, s.token)
		if s.goal != f.goals[r.Task] {
			t.Errorf("run %s: agent got goal %q, want the task's", r.ID, s.goal)
		}
		// The token dies with the run.
		req, _ := http.NewRequest("POST", s.mcpURL, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`))
		req.Header.Set("Authorization", "Bearer "+s.token)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("run %s: replay token: %v", r.ID, err)
		} else {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("run %s: token replayed after the run got %d, want 401", r.ID, resp.StatusCode)
			}
		}

		tr, _ := f.transcript(r.Org, r.ID)
		if tr.Goal != storage.Redacted {
			t.Errorf("run %s: stored goal %q", r.ID, tr.Goal)
		}
		phases := map[string]bool{}
		var calls []scripted.Action
		for _, e := range tr.Events {
			switch e.Kind {
			case storage.EventLifecycle:
				phases[e.Lifecycle.Phase] = true
			case storage.EventToolCall:
				var args map[string]any
				if err := json.Unmarshal(e.ToolCall.Arguments, &args); err != nil {
					t.Errorf("run %s: stored arguments %s: %v", r.ID, e.ToolCall.Arguments, err)
				}
				calls = append(calls, scripted.Action{Tool: e.ToolCall.Name, Args: args})
			}
		}
		if !phases["sandbox_started"] || !phases["sandbox_destroyed"] {
			t.Errorf("run %s: lifecycle %v lacks the sandbox's start or destruction", r.ID, phases)
		}
		if r.Result.ToolCalls != len(calls) {
			t.Errorf("run %s: result counts %d tool calls, transcript has %d", r.ID, r.Result.ToolCalls, len(calls))
		}
		if r.State == storage.RunFinished && r.Result.Passed {
			plan, err := scripted.Plan(s.goal)
			if err != nil {
				t.Fatal(err)
			}
			want := append([]scripted.Action{{Tool: "list_notes", Args: map[string]any{}}}, plan...)
			if len(calls) > len(want) { // the agent may go on after its plan
				calls = calls[:len(want)]
			}
			if diff := cmp.Diff(want, calls); diff != "" {
				t.Errorf("run %s: stored tool calls differ from the agent's (-agent +stored):\n%s", r.ID, diff)
			}
		}
		if phases["graded"] != (r.State == storage.RunFinished) {
			t.Errorf("run %s: graded=%t in state %s", r.ID, phases["graded"], r.State)
		}
	}
	return secrets
}

// checkNoStoredSecret reads back every byte the stores and the ledger hold
// and looks for every goal and token, raw and inside decoded JSON strings.
func (f *fixture) checkNoStoredSecret(secrets []string) {
	t := f.t
	ctx := context.Background()
	var blob bytes.Buffer
	dump := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		blob.Write(b)
		blob.WriteByte('\n')
	}
	tasks, err := f.store.ListTasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dump(tasks)
	for _, org := range []auth.OrgID{"org_a", "org_b"} {
		sc := auth.InternalScope(org)
		subs, err := f.store.ListSubmissions(ctx, sc, storage.Page{Limit: storage.MaxPageLimit})
		if err != nil {
			t.Fatal(err)
		}
		dump(subs)
		for _, s := range subs {
			runs, err := f.store.ListRuns(ctx, sc, s.ID, storage.Page{Limit: storage.MaxPageLimit})
			if err != nil {
				t.Fatal(err)
			}
			dump(runs)
			for _, r := range runs {
				_, raw := f.transcript(org, r.ID)
				blob.Write(raw)
				var doc any
				if err := json.Unmarshal(raw, &doc); err != nil {
					t.Fatal(err)
				}
				dump(decodedStrings(doc))
			}
		}
		audit, err := f.store.ListAudit(ctx, sc, storage.Page{Limit: storage.MaxPageLimit})
		if err != nil {
			t.Fatal(err)
		}
		dump(audit)
		dump(f.meter.Records(string(org)))
	}
	if blob.Len() < 2000 {
		t.Fatalf("only %d stored bytes read back; the scan would prove nothing", blob.Len())
	}
	for _, s := range secrets {
		if bytes.Contains(blob.Bytes(), []byte(s)) {
			t.Errorf("a stored byte holds the secret or goal %.40q…", s)
		}
	}
}

// decodedStrings returns every string in a decoded JSON value, decoding
// strings that are themselves JSON (tool arguments and results are raw JSON
// inside the transcript).
func decodedStrings(v any) []string {
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			out = append(out, v)
			var inner any
			if json.Unmarshal([]byte(v), &inner) == nil {
				walk(inner)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for k, e := range v {
				out = append(out, k)
				walk(e)
			}
		}
	}
	walk(v)
	return out
}
