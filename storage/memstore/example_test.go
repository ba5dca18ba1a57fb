package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/memstore"
)

func Example() {
	ctx := context.Background()
	s := memstore.New(nil)
	acme, other := auth.InternalScope("acme"), auth.InternalScope("other")

	sub := storage.Submission{ID: "sub-1", Org: "acme", Owner: "user_1", Image: "agent:latest", Tasks: []storage.TaskID{"task-1"}}
	run := storage.Run{ID: "run-1", Submission: "sub-1", Org: "acme", Task: "task-1", State: storage.RunQueued}
	if err := s.CreateSubmission(ctx, acme, sub, []storage.Run{run}); err != nil {
		log.Fatal(err)
	}
	got, err := s.GetRun(ctx, acme, "run-1")
	fmt.Println(got.State, err)

	// Another organisation's records look exactly like missing ones.
	_, err = s.GetRun(ctx, other, "run-1")
	fmt.Println(errors.Is(err, storage.ErrNotFound))

	// Erasure takes the runs with the submission.
	if err := s.DeleteSubmission(ctx, acme, "sub-1"); err != nil {
		log.Fatal(err)
	}
	_, err = s.GetRun(ctx, acme, "run-1")
	fmt.Println(errors.Is(err, storage.ErrNotFound))
	// Output:
	// queued <nil>
	// true
	// true
}

func ExampleStore_FailNext() {
	s := memstore.New(nil)
	s.FailNext("ListTasks", errors.New("injected outage"))
	_, err := s.ListTasks(context.Background())
	fmt.Println(err)
	_, err = s.ListTasks(context.Background())
	fmt.Println(err)
	// Output:
	// injected outage
	// <nil>
}
