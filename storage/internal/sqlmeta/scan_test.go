package sqlmeta_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/internal/d1emu"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/sqlitestore"
)

func marker(what string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return what + "-" + hex.EncodeToString(b)
}

// backend is a metadata store under test and the files that hold its data.
type backend struct {
	meta     storage.MetadataStore
	files    []string
	close    func()
	requests func() int64 // round trips so far; nil for an embedded store
}

var backends = []struct {
	name string
	open func(t *testing.T, keys *envelope.Keyring) backend
}{
	{"sqlitestore", func(t *testing.T, keys *envelope.Keyring) backend {
		path := filepath.Join(t.TempDir(), "meta.db")
		s, err := sqlitestore.Open(context.Background(), path, &sqlitestore.Options{Keyring: keys})
		if err != nil {
			t.Fatal(err)
		}
		return backend{meta: s, files: sqliteFiles(path), close: func() { s.Close() }}
	}},
	{"d1store", func(t *testing.T, keys *envelope.Keyring) backend {
		path := filepath.Join(t.TempDir(), "d1.db")
		emu, err := d1emu.New(path, d1emu.Options{AccountID: "acct", DatabaseID: "db", Token: "token"})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(emu)
		s, err := d1store.Open(context.Background(), "acct", "db", "token",
			&d1store.Options{BaseURL: srv.URL + "/client/v4/", HTTPClient: srv.Client(), Keyring: keys})
		if err != nil {
			t.Fatal(err)
		}
		return backend{meta: s, files: sqliteFiles(path), close: func() { emu.Close(); srv.Close() }, requests: emu.Requests}
	}},
}

func sqliteFiles(path string) []string { return []string{path, path + "-wal", path + "-shm"} }

// TestNoPlaintextAtRest runs the whole pipeline — harness, in-memory
// sandbox, the scripted agent, a private notes task — on each SQL backend,
// then reads every byte of its database files, open and after close: none
// holds the goal, a run token, the task's private content, or the sealed
// submission metadata (P6, P7, P8, P13).
func TestNoPlaintextAtRest(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			kek := make([]byte, envelope.KeySize)
			rand.Read(kek)
			kp, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": kek})
			if err != nil {
				t.Fatal(err)
			}
			keys := envelope.NewKeyring(kp)
			be := b.open(t, keys)

			var mu sync.Mutex
			var tokens []string
			agent := func(ctx context.Context, env *memsandbox.Env) int {
				mu.Lock()
				tokens = append(tokens, env.Getenv(sandbox.EnvMCPToken))
				mu.Unlock()
				// A careless agent echoes its secrets.
				fmt.Fprintln(env.Stdout(), env.Getenv(sandbox.EnvGoal), env.Getenv(sandbox.EnvMCPToken))
				err := scripted.Solve(ctx, scripted.FromEnv(env.Getenv, env.HTTPClient()))
				if err != nil {
					return 1
				}
				return 0
			}
			h, err := compatool.New(compatool.Options{
				Metadata:     be.meta,
				Transcripts:  memstore.New(nil),
				Sandbox:      memsandbox.New(map[string]memsandbox.Agent{"scripted": agent}, nil),
				Keys:         keys,
				Environments: map[string]compatool.Environment{notes.Name: notes.Environment{}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Start(ctx); err != nil {
				t.Fatal(err)
			}
			title, body := marker("title"), marker("body")
			content, err := notes.Task(nil, []notes.Note{{Title: title, Body: body}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = h.PutTask(ctx, compatool.TaskSpec{ID: "notes-1", Environment: notes.Name, Month: compatool.Month(time.Now()), Private: true, Content: content})
			if err != nil {
				t.Fatal(err)
			}
			var before int64
			if be.requests != nil {
				before = be.requests()
			}
			owner, agentName := marker("user"), marker("agent name")
			p := &auth.Principal{Subject: owner, Org: "org_1", Role: "org:admin"}
			scope, _ := auth.ScopeFor(p)
			for range 2 {
				sub, err := h.Submit(ctx, p, compatool.Submission{AgentName: agentName, Image: "scripted", Tasks: []storage.TaskID{"notes-1"}})
				if err != nil {
					t.Fatal(err)
				}
				runs, err := h.Wait(ctx, scope, sub.ID)
				if err != nil {
					t.Fatal(err)
				}
				if r := runs[0]; r.State != storage.RunFinished || r.Result == nil || !r.Result.Passed {
					t.Fatalf("run %s: %s %+v; the pipeline did not run through", r.ID, r.State, r.Result)
				}
			}
			if err := h.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if be.requests != nil {
				t.Logf("the harness sent %.1f D1 requests per run (submit, execute, wait)", float64(be.requests()-before)/2)
			}
			mu.Lock()
			if len(tokens) != 2 {
				t.Fatalf("captured %d run tokens, want 2", len(tokens))
			}
			secrets := map[string]string{
				"goal": content.Goal, "task config": string(content.Config), "note title": title, "note body": body,
				"run token 1": tokens[0], "run token 2": tokens[1], "owner": owner, "agent name": agentName,
			}
			mu.Unlock()

			scan := func(when string) {
				t.Helper()
				read := 0
				for _, f := range be.files {
					data, err := os.ReadFile(f)
					if os.IsNotExist(err) {
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					read += len(data)
					for what, s := range secrets {
						if s == "" {
							t.Fatalf("secret %s is empty", what)
						}
						if bytes.Contains(data, []byte(s)) {
							t.Errorf("%s: %s holds the %s in plaintext", when, filepath.Base(f), what)
						}
					}
				}
				if read == 0 {
					t.Fatalf("%s: no database file to scan", when)
				}
				t.Logf("%s: scanned %d bytes", when, read)
			}
			scan("open")
			be.close()
			scan("closed")
		})
	}
}
