package sqlitestore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/sqlitestore"
)

func Example() {
	dir, err := os.MkdirTemp("", "sqlitestore")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := sqlitestore.Open(ctx, filepath.Join(dir, "compatool.db"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	acme := auth.InternalScope("acme")
	sub := storage.Submission{ID: "sub-1", Org: "acme", Owner: "user_1", Image: "agent:latest", Tasks: []storage.TaskID{"task-1"}}
	run := storage.Run{ID: "run-1", Submission: "sub-1", Org: "acme", Task: "task-1", State: storage.RunQueued}
	if err := s.CreateSubmission(ctx, acme, sub, []storage.Run{run}); err != nil {
		log.Fatal(err)
	}
	runs, err := s.ListRuns(ctx, acme, "sub-1", storage.Page{})
	fmt.Println(len(runs), runs[0].State, err)

	// Another organisation's records look exactly like missing ones.
	_, err = s.GetRun(ctx, auth.InternalScope("other"), "run-1")
	fmt.Println(errors.Is(err, storage.ErrNotFound))

	// Erasure takes the runs with the submission, in one transaction.
	if err := s.DeleteSubmission(ctx, acme, "sub-1"); err != nil {
		log.Fatal(err)
	}
	_, err = s.GetRun(ctx, acme, "run-1")
	fmt.Println(errors.Is(err, storage.ErrNotFound))
	// Output:
	// 1 queued <nil>
	// true
	// true
}
