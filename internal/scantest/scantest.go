// Package scantest runs the whole pipeline against a storage driver and then
// reads back every byte the driver wrote to disk, looking for what must never
// be stored: the goal, a run's MCP token, and private task plaintext (P6,
// P8, P13 of DESIGN.md). Only tests import it.
package scantest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
)

// Result is what a pipeline run leaves behind.
type Result struct {
	// Runs are the finished runs, each with its organisation.
	Runs []storage.Run
	// Secrets are the byte strings no store may hold: every goal, every run
	// token and every private task configuration, raw and as they would
	// appear inside a JSON string.
	Secrets [][]byte
}

// Pipeline runs the scripted agent on three private notes tasks for two
// organisations through a [compatool.Harness] that stores transcripts in ts
// and metadata in meta, and returns the finished runs with the secrets they
// saw. It fails the test unless every run finished and passed.
func Pipeline(t testing.TB, meta storage.MetadataStore, ts storage.TranscriptStore) Result {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	tokens := map[string]string{}
	agent := func(ctx context.Context, env *memsandbox.Env) int {
		mu.Lock()
		tokens[env.Getenv(sandbox.EnvRunID)] = env.Getenv(sandbox.EnvMCPToken)
		mu.Unlock()
		err := scripted.Solve(ctx, scripted.FromEnv(env.Getenv, env.HTTPClient()))
		if err != nil {
			fmt.Fprintln(env.Stderr(), err)
			return 1
		}
		return 0
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	keys, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": kek})
	if err != nil {
		t.Fatal(err)
	}
	h, err := compatool.New(compatool.Options{
		Metadata:     meta,
		Transcripts:  ts,
		Sandbox:      memsandbox.New(map[string]memsandbox.Agent{"scripted": agent}, nil),
		Keys:         envelope.NewKeyring(keys),
		Environments: map[string]compatool.Environment{notes.Name: notes.Environment{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)

	var res Result
	// A secret is looked for raw and in both JSON string escapings (with
	// and without HTML escaping).
	secret := func(s string) {
		res.Secrets = append(res.Secrets, []byte(s))
		for _, html := range []bool{true, false} {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(html)
			if err := enc.Encode(s); err != nil {
				t.Fatal(err)
			}
			q := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
			res.Secrets = append(res.Secrets, q[1:len(q)-1])
		}
	}
	var ids []storage.TaskID
	for i, c := range []struct {
		seed, add []notes.Note
		del       []string
	}{
		{nil, []notes.Note{{Title: "groceries", Body: "eggs, milk and the unreleased \"quarterly\" figures"}}, nil},
		{[]notes.Note{{Title: "old plan", Body: "launch in May"}}, []notes.Note{{Title: "new plan", Body: "launch in <June> & tell nobody"}}, []string{"old plan"}},
		{nil, []notes.Note{{Title: "a", Body: "first"}, {Title: "b", Body: "second"}}, nil},
	} {
		content, err := notes.Task(c.seed, c.add, c.del)
		if err != nil {
			t.Fatal(err)
		}
		id := storage.TaskID(fmt.Sprintf("notes-%d", i))
		spec := compatool.TaskSpec{ID: id, Environment: notes.Name, Month: compatool.Month(time.Now()), Private: true, Content: content}
		if err := h.PutTask(ctx, spec); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		secret(content.Goal)
		secret(string(content.Config))
	}
	for _, org := range []auth.OrgID{"org_a", "org_b"} {
		p := &auth.Principal{Subject: "user_" + string(org), Org: org, Role: "org:admin"}
		sub, err := h.Submit(ctx, p, compatool.Submission{AgentName: "scripted", Image: "scripted", Tasks: ids})
		if err != nil {
			t.Fatal(err)
		}
		runs, err := h.Wait(ctx, auth.InternalScope(org), sub.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range runs {
			if r.State != storage.RunFinished || r.Result == nil || !r.Result.Passed {
				t.Fatalf("run %s of %s: state %s, result %+v; the pipeline must pass for the scan to mean anything", r.ID, org, r.State, r.Result)
			}
		}
		res.Runs = append(res.Runs, runs...)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range res.Runs {
		tok := tokens[string(r.ID)]
		if len(tok) < 16 {
			t.Fatalf("run %s: the agent saw token %q; want a real one", r.ID, tok)
		}
		secret(tok)
	}
	return res
}

// ScanDir reads every regular file under dir, with its extended attributes
// (on Linux), and fails the test if any holds one of secrets. So that a scan that finds nothing proves something, it also
// fails unless the bytes read hold every string of mustFind (say, the run
// ids), and it returns how many bytes it read.
func ScanDir(t testing.TB, dir string, secrets [][]byte, mustFind ...string) int64 {
	t.Helper()
	var total int64
	found := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		x, err := xattrs(path)
		if err != nil {
			return fmt.Errorf("reading extended attributes of %s: %w", path, err)
		}
		b = append(b, x...)
		total += int64(len(b))
		for _, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds a secret: %.60q", path, s)
			}
		}
		for _, s := range mustFind {
			if bytes.Contains(b, []byte(s)) {
				found[s] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", dir, err)
	}
	for _, s := range mustFind {
		if !found[s] {
			t.Errorf("no file under %s holds %q; the scan read the wrong place", dir, s)
		}
	}
	return total
}
