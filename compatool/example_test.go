package compatool_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/memstore"
)

// The whole pipeline in memory: a task, a submission, its run, its result
// and its redacted transcript.
func Example() {
	ctx := context.Background()
	agent := func(ctx context.Context, env *memsandbox.Env) int {
		err := scripted.Solve(ctx, scripted.FromEnv(env.Getenv, env.HTTPClient()))
		if err != nil {
			return 1
		}
		return 0
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	keys, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": kek})
	if err != nil {
		log.Fatal(err)
	}
	store := memstore.New(nil)
	h, err := compatool.New(compatool.Options{
		Metadata:     store,
		Transcripts:  store,
		Sandbox:      memsandbox.New(map[string]memsandbox.Agent{"scripted": agent}, nil),
		Keys:         envelope.NewKeyring(keys),
		Environments: map[string]compatool.Environment{notes.Name: notes.Environment{}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer h.Close(ctx)

	content, _ := notes.Task(nil, []notes.Note{{Title: "groceries", Body: "eggs, milk"}}, nil)
	err = h.PutTask(ctx, compatool.TaskSpec{ID: "notes-1", Environment: notes.Name, Month: compatool.Month(time.Now()), Private: true, Content: content})
	if err != nil {
		log.Fatal(err)
	}
	// A host gets the principal from an auth.Authenticator.
	p := &auth.Principal{Subject: "user_1", Org: "org_1", Role: "org:admin"}
	sub, err := h.Submit(ctx, p, compatool.Submission{AgentName: "scripted", Image: "scripted", Tasks: []storage.TaskID{"notes-1"}})
	if err != nil {
		log.Fatal(err)
	}
	scope, _ := auth.ScopeFor(p)
	runs, err := h.Wait(ctx, scope, sub.ID)
	if err != nil {
		log.Fatal(err)
	}
	r := runs[0]
	fmt.Println(r.State, r.Result.Passed, r.Result.ToolCalls, "tool calls")

	rc, _, err := h.Transcript(ctx, scope, r.ID)
	if err != nil {
		log.Fatal(err)
	}
	defer rc.Close()
	raw, _ := io.ReadAll(rc)
	var tr storage.Transcript
	json.Unmarshal(raw, &tr)
	fmt.Println("stored goal:", tr.Goal)
	for _, e := range tr.Events {
		if e.Kind == storage.EventToolCall {
			fmt.Println(e.ToolCall.Name, string(e.ToolCall.Arguments))
		}
	}
	// Output:
	// finished true 2 tool calls
	// stored goal: [REDACTED]
	// list_notes {}
	// add_note {"body":"eggs, milk","title":"groceries"}
}
