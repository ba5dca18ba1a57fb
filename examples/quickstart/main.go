// Command quickstart shows the whole Compatool pipeline in one command: it
// mints a token for a demo organisation, defines private notes tasks,
// submits the scripted reference agent against them, shows progress while
// the runs execute, and prints a results table and one redacted transcript.
//
//	go run ./examples/quickstart
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

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

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// agent runs the scripted reference agent inside a memsandbox instance.
func agent(ctx context.Context, env *memsandbox.Env) int {
	err := scripted.Solve(ctx, scripted.Config{
		MCPURL:     env.Getenv(sandbox.EnvMCPURL),
		Token:      env.Getenv(sandbox.EnvMCPToken),
		Goal:       env.Getenv(sandbox.EnvGoal),
		HTTPClient: env.HTTPClient(),
	})
	if err != nil {
		fmt.Fprintln(env.Stderr(), err)
		return 1
	}
	fmt.Fprintln(env.Stdout(), "goal reached:", env.Getenv(sandbox.EnvGoal))
	return 0
}

func run(ctx context.Context, out io.Writer) error {
	kek := make([]byte, 32)
	rand.Read(kek)
	keys, err := envelope.NewStaticKeys("quickstart", map[string][]byte{"quickstart": kek})
	if err != nil {
		return err
	}
	store := memstore.New(nil)
	meter := membilling.New()
	h, err := compatool.New(compatool.Options{
		Metadata:     store,
		Transcripts:  store,
		Sandbox:      memsandbox.New(map[string]memsandbox.Agent{"scripted-agent": agent}, nil),
		Keys:         envelope.NewKeyring(keys),
		Meter:        meter,
		Environments: map[string]compatool.Environment{notes.Name: notes.Environment{}},
		Limits:       sandbox.Limits{Timeout: 30 * time.Second},
	})
	if err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return err
	}
	defer h.Close(ctx)

	// Identity: a real signed, short-lived JWT in Clerk's claim shape.
	authority, err := devauth.Generate(nil)
	if err != nil {
		return err
	}
	token, err := authority.Issue(devauth.Claims{Subject: "user_demo", Org: "org_demo", Role: "org:admin"})
	if err != nil {
		return err
	}
	principal, err := authority.Authenticate(ctx, token)
	if err != nil {
		return err
	}
	scope, err := auth.ScopeFor(principal)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "signed in as %s of %s with a %s token\n", principal.Subject, principal.Org, principal.ExpiresAt.Sub(principal.IssuedAt))

	// The private task set of this month.
	month := compatool.Month(time.Now())
	specs := []struct {
		seed []notes.Note
		add  []notes.Note
		del  []string
	}{
		{add: []notes.Note{{Title: "groceries", Body: "eggs, milk, bread"}}},
		{add: []notes.Note{{Title: "todo", Body: "file taxes"}, {Title: "ideas", Body: "a faster sandbox"}}},
		{seed: []notes.Note{{Title: "draft", Body: "old"}}, del: []string{"draft"}},
		{seed: []notes.Note{{Title: "a", Body: "1"}}, add: []notes.Note{{Title: "b", Body: "2"}}, del: []string{"a"}},
		{add: []notes.Note{{Title: "quote", Body: `she said "hi" \o/`}}},
	}
	var ids []storage.TaskID
	for i, s := range specs {
		content, err := notes.Task(s.seed, s.add, s.del)
		if err != nil {
			return err
		}
		id := storage.TaskID(fmt.Sprintf("notes-%d", i+1))
		if err := h.PutTask(ctx, compatool.TaskSpec{ID: id, Environment: notes.Name, Month: month, Private: true, Content: content}); err != nil {
			return err
		}
		ids = append(ids, id)
	}
	fmt.Fprintf(out, "defined %d private tasks for %s (content sealed with AES-256-GCM)\n", len(ids), month)

	sub, err := h.Submit(ctx, principal, compatool.Submission{AgentName: "scripted reference agent", Image: "scripted-agent", Tasks: ids})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "submitted %s: %d runs queued\n", sub.ID, len(ids))

	runs, err := progress(ctx, out, h, scope, sub.ID)
	if err != nil {
		return err
	}

	fmt.Fprintln(out, "\nresults")
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tTASK\tSTATE\tPASSED\tSCORE\tTOOL CALLS\tAGENT TIME")
	for _, r := range runs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%.2f\t%d\t%s\n", r.ID, r.Task, r.State, r.Result.Passed, r.Result.Score, r.Result.ToolCalls, r.Result.AgentTime.Round(time.Microsecond))
	}
	tw.Flush()
	totals := meter.Totals(string(principal.Org))
	fmt.Fprintf(out, "usage recorded: %d runs, %d tool calls\n", totals.Runs, totals.ToolCalls)

	rc, _, err := h.Transcript(ctx, scope, runs[len(runs)-1].ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, raw, "", "  "); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nstored transcript of %s (the goal never reached the store):\n%s\n", runs[len(runs)-1].ID, pretty.String())
	return nil
}

// progress prints a line each time the count of finished runs changes and
// returns the runs once all are done.
func progress(ctx context.Context, out io.Writer, h *compatool.Harness, scope auth.Scope, sub storage.SubmissionID) ([]storage.Run, error) {
	done := make(chan struct{})
	var runs []storage.Run
	var werr error
	go func() {
		runs, werr = h.Wait(ctx, scope, sub)
		close(done)
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := -1
	for {
		select {
		case <-done:
			return runs, werr
		case <-tick.C:
			rs, err := h.Runs(ctx, scope, sub, storage.Page{})
			if err != nil {
				return nil, err
			}
			n := 0
			for _, r := range rs {
				if r.State.Terminal() {
					n++
				}
			}
			if n != last {
				fmt.Fprintf(out, "  %d/%d runs done\n", n, len(rs))
				last = n
			}
		}
	}
}
