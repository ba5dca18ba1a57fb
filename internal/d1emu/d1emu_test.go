package d1emu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/internal/d1emu"
)

const (
	account  = "acct"
	database = "db"
	token    = "secret-token"
)

type emu struct {
	s   *d1emu.Server
	srv *httptest.Server
}

func newEmu(t *testing.T) *emu {
	t.Helper()
	s, err := d1emu.New(filepath.Join(t.TempDir(), "d1.db"), d1emu.Options{AccountID: account, DatabaseID: database, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close()
		srv.Close()
	})
	return &emu{s: s, srv: srv}
}

// post sends body to op ("query" or "raw") and returns the status and the
// decoded envelope.
func (e *emu) post(t *testing.T, op, tok string, body any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", e.srv.URL+"/client/v4/accounts/"+account+"/d1/database/"+database+"/"+op, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("%s answered %d with %q, not JSON", op, resp.StatusCode, raw)
	}
	return resp.StatusCode, env
}

type stmt struct {
	SQL    string `json:"sql"`
	Params []any  `json:"params,omitempty"`
}

type batch struct {
	Batch []stmt `json:"batch"`
}

func (e *emu) mustPost(t *testing.T, op string, body any) []any {
	t.Helper()
	code, env := e.post(t, op, token, body)
	if code != 200 || env["success"] != true {
		t.Fatalf("%s %v: %d %v", op, body, code, env)
	}
	return env["result"].([]any)
}

func errorOf(env map[string]any) (float64, string) {
	errs, _ := env["errors"].([]any)
	if env["success"] != false || len(errs) != 1 {
		return 0, ""
	}
	e := errs[0].(map[string]any)
	code, _ := e["code"].(float64)
	msg, _ := e["message"].(string)
	return code, msg
}

func TestShapes(t *testing.T) {
	e := newEmu(t)
	e.mustPost(t, "query", stmt{SQL: "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, f REAL, b BLOB)"})
	res := e.mustPost(t, "query", batch{[]stmt{
		{SQL: "INSERT INTO t VALUES (?, ?, ?, ?)", Params: []any{"a", 1, 1.5, nil}},
		{SQL: "INSERT INTO t VALUES (?, CAST(? AS INTEGER), ?, x'0102')", Params: []any{"b", "2", true}},
	}})
	if len(res) != 2 {
		t.Fatalf("a batch of 2 answered %d results", len(res))
	}
	m := res[0].(map[string]any)["meta"].(map[string]any)
	if m["changes"] != 1.0 || m["changed_db"] != true {
		t.Errorf("meta of an insert = %v", m)
	}

	got := e.mustPost(t, "query", stmt{SQL: "SELECT id, n, f, b FROM t ORDER BY id"})
	want := []any{map[string]any{
		"results": []any{
			map[string]any{"id": "a", "n": 1.0, "f": 1.5, "b": nil},
			map[string]any{"id": "b", "n": 2.0, "f": 1.0, "b": []any{1.0, 2.0}},
		},
		"success": true,
	}}
	if diff := cmp.Diff(want, got, ignoreMeta); diff != "" {
		t.Errorf("/query (-want +got):\n%s", diff)
	}
	got = e.mustPost(t, "raw", stmt{SQL: "SELECT id, n FROM t WHERE id = ?", Params: []any{"a"}})
	want = []any{map[string]any{
		"results": map[string]any{"columns": []any{"id", "n"}, "rows": []any{[]any{"a", 1.0}}},
		"success": true,
	}}
	if diff := cmp.Diff(want, got, ignoreMeta); diff != "" {
		t.Errorf("/raw (-want +got):\n%s", diff)
	}
}

var ignoreMeta = cmp.FilterPath(func(p cmp.Path) bool {
	mi, ok := p.Last().(cmp.MapIndex)
	return ok && mi.Key().String() == "meta"
}, cmp.Ignore())

func TestBatchIsOneTransaction(t *testing.T) {
	e := newEmu(t)
	e.mustPost(t, "query", stmt{SQL: "CREATE TABLE t (id TEXT PRIMARY KEY)"})
	code, env := e.post(t, "query", token, batch{[]stmt{
		{SQL: "INSERT INTO t VALUES ('a')"},
		{SQL: "INSERT INTO t VALUES ('a')"},
	}})
	if c, msg := errorOf(env); code != 400 || c != 7500 || !strings.Contains(msg, "UNIQUE constraint failed") {
		t.Errorf("a failing batch: %d %v; want 400 with code 7500 and SQLite's message", code, env)
	}
	res := e.mustPost(t, "raw", stmt{SQL: "SELECT count(*) FROM t"})
	if n := res[0].(map[string]any)["results"].(map[string]any)["rows"].([]any)[0].([]any)[0]; n != 0.0 {
		t.Errorf("after a failed batch the table has %v rows, want 0", n)
	}
}

func TestRefusals(t *testing.T) {
	e := newEmu(t)
	for _, c := range []struct {
		name   string
		tok    string
		body   any
		status int
		code   float64
	}{
		{"wrong token", "nope", stmt{SQL: "SELECT 1"}, 401, 10000},
		{"BEGIN", token, stmt{SQL: "BEGIN"}, 400, 7500},
		{"COMMIT in a text", token, stmt{SQL: "SELECT 1; COMMIT"}, 400, 7500},
		{"SAVEPOINT", token, stmt{SQL: "SAVEPOINT x"}, 400, 7500},
		{"PRAGMA journal_mode", token, stmt{SQL: "PRAGMA journal_mode = DELETE"}, 400, 7500},
		{"ATTACH", token, stmt{SQL: "ATTACH DATABASE 'x.db' AS x"}, 400, 7500},
		{"object parameter", token, stmt{SQL: "SELECT ?", Params: []any{map[string]any{}}}, 400, 7500},
		{"no statement", token, stmt{SQL: " "}, 400, 7500},
		{"malformed body", token, "not an object", 400, 7400},
	} {
		status, env := e.post(t, "query", c.tok, c.body)
		if code, msg := errorOf(env); status != c.status || code != c.code || msg == "" {
			t.Errorf("%s: %d %v; want %d with error code %v", c.name, status, env, c.status, c.code)
		}
	}
	// D1's allowed PRAGMAs work, and foreign keys are on.
	res := e.mustPost(t, "raw", stmt{SQL: "PRAGMA foreign_keys"})
	if v := res[0].(map[string]any)["results"].(map[string]any)["rows"].([]any)[0].([]any)[0]; v != 1.0 {
		t.Errorf("PRAGMA foreign_keys = %v, want 1", v)
	}
}

func TestFaults(t *testing.T) {
	var mu sync.Mutex
	var met []d1emu.Fault
	s, err := d1emu.New(filepath.Join(t.TempDir(), "d1.db"), d1emu.Options{AccountID: account, DatabaseID: database, Token: token,
		OnFault: func(f d1emu.Fault) {
			mu.Lock()
			defer mu.Unlock()
			met = append(met, f)
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()
	defer s.Close()
	e := &emu{s: s, srv: srv}
	e.mustPost(t, "query", stmt{SQL: "CREATE TABLE t (id TEXT PRIMARY KEY)"})

	s.Inject(d1emu.RateLimited, d1emu.ServerError, d1emu.ApplyThenFail)
	insert := func(id string) (int, map[string]any) {
		return e.post(t, "query", token, stmt{SQL: "INSERT INTO t VALUES (?)", Params: []any{id}})
	}
	for _, c := range []struct {
		id     string
		status int
	}{{"a", 429}, {"b", 500}, {"c", 500}, {"d", 200}} {
		if status, env := insert(c.id); status != c.status {
			t.Errorf("insert %s: %d %v, want %d", c.id, status, env, c.status)
		}
	}
	res := e.mustPost(t, "raw", stmt{SQL: "SELECT id FROM t ORDER BY id"})
	rows := res[0].(map[string]any)["results"].(map[string]any)["rows"]
	// Only ApplyThenFail ("c") and the unfaulted insert ("d") were applied.
	if diff := cmp.Diff([]any{[]any{"c"}, []any{"d"}}, rows); diff != "" {
		t.Errorf("rows after faults (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]d1emu.Fault{d1emu.RateLimited, d1emu.ServerError, d1emu.ApplyThenFail}, met); diff != "" {
		t.Errorf("faults met (-want +got):\n%s", diff)
	}
	if got := s.Requests(); got != 6 {
		t.Errorf("Requests() = %d, want 6", got)
	}
}

func TestHangEndsWithTheClient(t *testing.T) {
	hung := make(chan d1emu.Fault, 1)
	s, err := d1emu.New(filepath.Join(t.TempDir(), "d1.db"), d1emu.Options{AccountID: account, DatabaseID: database, Token: token,
		OnFault: func(f d1emu.Fault) { hung <- f }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()
	defer s.Close()
	s.Inject(d1emu.Hang)
	req, _ := http.NewRequest("POST", srv.URL+"/client/v4/accounts/"+account+"/d1/database/"+database+"/query", strings.NewReader(`{"sql":"SELECT 1"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		resp, err := srv.Client().Do(req.WithContext(ctx))
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-hung
	cancel()
	if err := <-done; err == nil {
		t.Error("a hung request answered")
	}
	// The server still serves.
	e := &emu{s: s, srv: srv}
	e.mustPost(t, "query", stmt{SQL: "SELECT 1"})
}
