package d1store_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/d1emu"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
)

// A store on an emulated D1 database; against Cloudflare, leave BaseURL and
// HTTPClient unset.
func Example() {
	dir, err := os.MkdirTemp("", "d1store")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	emu, err := d1emu.New(filepath.Join(dir, "d1.db"), d1emu.Options{AccountID: "acct", DatabaseID: "db", Token: "token"})
	if err != nil {
		log.Fatal(err)
	}
	defer emu.Close()
	srv := httptest.NewServer(emu)
	defer srv.Close()

	ctx := context.Background()
	s, err := d1store.Open(ctx, "acct", "db", "token", &d1store.Options{BaseURL: srv.URL + "/client/v4/", HTTPClient: srv.Client()})
	if err != nil {
		log.Fatal(err)
	}
	acme := auth.InternalScope("acme")
	sub := storage.Submission{ID: "sub-1", Org: "acme", Owner: "user_1", Image: "agent:latest", Tasks: []storage.TaskID{"task-1"}}
	run := storage.Run{ID: "run-1", Submission: "sub-1", Org: "acme", Task: "task-1", State: storage.RunQueued}

	// The submission lands even though D1's answer to the write is lost:
	// the retry recognises the store's own write.
	emu.Inject(d1emu.ApplyThenFail)
	before := emu.Requests()
	err = s.CreateSubmission(ctx, acme, sub, []storage.Run{run})
	fmt.Println(err, emu.Requests()-before, "requests")

	got, err := s.GetRun(ctx, acme, "run-1")
	fmt.Println(got.State, err)
	// Output:
	// <nil> 3 requests
	// queued <nil>
}
