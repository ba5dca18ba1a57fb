package d1store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/compatool/compatool/internal/d1emu"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
	"github.com/compatool/compatool/storage/storagetest"
)

const (
	account  = "acct-1"
	database = "db-1"
	token    = "test-token"
)

// d1 is an emulated D1 database and a store on it.
type d1 struct {
	emu  *d1emu.Server
	srv  *httptest.Server
	s    *d1store.Store
	path string // the emulated database file
}

func newD1(t testing.TB, opts *d1store.Options) *d1 {
	t.Helper()
	return newD1With(t, opts, d1emu.Options{})
}

// newD1With is newD1 with emulator options; the account, database and
// token are filled in.
func newD1With(t testing.TB, opts *d1store.Options, eo d1emu.Options) *d1 {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d1.db")
	eo.AccountID, eo.DatabaseID, eo.Token = account, database, token
	emu, err := d1emu.New(path, eo)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		emu.Close() // first, to release hung requests
		srv.Close()
	})
	o := d1store.Options{RetryDelay: time.Millisecond, MaxRetryDelay: 10 * time.Millisecond}
	if opts != nil {
		o = *opts
	}
	o.BaseURL, o.HTTPClient = srv.URL+"/client/v4/", srv.Client()
	s, err := d1store.Open(context.Background(), account, database, token, &o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return &d1{emu: emu, srv: srv, s: s, path: path}
}

type harness struct{ d *d1 }

func (h harness) Metadata() storage.MetadataStore      { return h.d.s }
func (h harness) Transcripts() storage.TranscriptStore { return nil }
func (h harness) SetNow(time.Time)                     {}
func (h harness) Close()                               { h.d.s.Close() }

func TestConformance(t *testing.T) {
	storagetest.RunConformanceTests(t, func(t *testing.T) storagetest.Harness { return harness{newD1(t, nil)} })
}

// rawQuery sends one statement to the emulator past the store and returns
// the HTTP status.
func rawQuery(t *testing.T, d *d1, sql string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"sql": sql})
	req, err := http.NewRequest("POST", d.srv.URL+"/client/v4/accounts/"+account+"/d1/database/"+database+"/query", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := d.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
