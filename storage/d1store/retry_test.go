package d1store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/d1emu"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
)

var (
	ctx   = context.Background()
	orgA  = auth.OrgID("org-a")
	scope = auth.InternalScope(orgA)
	t0    = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)
)

func submission(id storage.SubmissionID) (storage.Submission, []storage.Run) {
	sub := storage.Submission{ID: id, Org: orgA, Owner: "user_1", AgentName: "agent", Image: "img",
		Tasks: []storage.TaskID{"task-1", "task-2"}, CreatedAt: t0}
	runs := make([]storage.Run, len(sub.Tasks))
	for i, task := range sub.Tasks {
		runs[i] = storage.Run{ID: storage.RunID(fmt.Sprintf("%s.%s", id, task)), Submission: id, Org: orgA, Task: task,
			State: storage.RunQueued, CreatedAt: t0}
	}
	return sub, runs
}

// checkWhole checks that sub and exactly its runs are stored.
func checkWhole(t *testing.T, s *d1store.Store, sub storage.Submission, runs []storage.Run) {
	t.Helper()
	got, err := s.GetSubmission(ctx, scope, sub.ID)
	if err != nil {
		t.Fatalf("GetSubmission: %v", err)
	}
	if diff := cmp.Diff(sub, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("submission (-want +got):\n%s", diff)
	}
	list, err := s.ListRuns(ctx, scope, sub.ID, storage.Page{})
	if err != nil {
		t.Fatalf("ListRuns: %v", err)
	}
	if diff := cmp.Diff(runs, list, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
}

// Every write, met by every fault, ends as if it had run once.
func TestRetriedWrites(t *testing.T) {
	faults := []d1emu.Fault{d1emu.RateLimited, d1emu.ServerError, d1emu.Hang, d1emu.ApplyThenFail}
	writes := []struct {
		name string
		// write runs the call under test on a store holding sub-0 (with
		// its runs, run 0 running) and audit-0; check checks its effect.
		write func(s *d1store.Store) error
		check func(t *testing.T, s *d1store.Store)
	}{
		{"CreateSubmission", func(s *d1store.Store) error {
			sub, runs := submission("sub-1")
			return s.CreateSubmission(ctx, scope, sub, runs)
		}, func(t *testing.T, s *d1store.Store) {
			sub, runs := submission("sub-1")
			checkWhole(t, s, sub, runs)
		}},
		{"UpdateRun", func(s *d1store.Store) error {
			_, runs := submission("sub-0")
			r := runs[0]
			r.State, r.FinishedAt, r.Result = storage.RunFinished, t0, &storage.Result{Passed: true, Score: 1}
			return s.UpdateRun(ctx, scope, r)
		}, func(t *testing.T, s *d1store.Store) {
			r, err := s.GetRun(ctx, scope, "sub-0.task-1")
			if err != nil || r.State != storage.RunFinished || r.Result == nil || !r.Result.Passed {
				t.Errorf("run after UpdateRun: %+v, %v", r, err)
			}
		}},
		{"SetPublic", func(s *d1store.Store) error { return s.SetPublic(ctx, scope, "sub-0", true) },
			func(t *testing.T, s *d1store.Store) {
				if _, err := s.PublicRun(ctx, "sub-0.task-1"); err != nil {
					t.Errorf("PublicRun after SetPublic: %v", err)
				}
			}},
		{"DeleteSubmission", func(s *d1store.Store) error { return s.DeleteSubmission(ctx, scope, "sub-0") },
			func(t *testing.T, s *d1store.Store) {
				if _, err := s.GetRun(ctx, scope, "sub-0.task-2"); !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("GetRun of an erased run: %v, want ErrNotFound", err)
				}
			}},
		{"AppendAudit", func(s *d1store.Store) error {
			return s.AppendAudit(ctx, storage.AuditRecord{ID: "audit-1", At: t0, Staff: "staff_1", Org: orgA,
				Operation: auth.OpSupport, Reason: "ticket 1", Action: "results"})
		}, func(t *testing.T, s *d1store.Store) {
			log, err := s.ListAudit(ctx, scope, storage.Page{})
			if err != nil || len(log) != 2 {
				t.Errorf("audit log: %d records, %v; want 2", len(log), err)
			}
		}},
		{"PutTask", func(s *d1store.Store) error {
			return s.PutTask(ctx, storage.Task{ID: "task-1", Environment: "notes", Month: "2026-03"})
		}, func(t *testing.T, s *d1store.Store) {
			if _, err := s.GetTask(ctx, "task-1"); err != nil {
				t.Errorf("GetTask: %v", err)
			}
		}},
	}
	for _, w := range writes {
		for _, f := range faults {
			t.Run(w.name+"/"+f.String(), func(t *testing.T) {
				d := newD1(t, &d1store.Options{RetryDelay: time.Millisecond, MaxRetryDelay: 5 * time.Millisecond,
					AttemptTimeout: 200 * time.Millisecond})
				sub, runs := submission("sub-0")
				if err := d.s.CreateSubmission(ctx, scope, sub, runs); err != nil {
					t.Fatal(err)
				}
				runs[0].State = storage.RunRunning
				if err := d.s.UpdateRun(ctx, scope, runs[0]); err != nil {
					t.Fatal(err)
				}
				if err := d.s.AppendAudit(ctx, storage.AuditRecord{ID: "audit-0", At: t0, Staff: "staff_1", Org: orgA,
					Operation: auth.OpSupport, Reason: "ticket 0", Action: "results"}); err != nil {
					t.Fatal(err)
				}
				before := d.emu.Requests()
				d.emu.Inject(f)
				if err := w.write(d.s); err != nil {
					t.Fatalf("%s after %s: %v", w.name, f, err)
				}
				if n := d.emu.Requests() - before; n < 2 {
					t.Errorf("%s after %s took %d requests; the fault was not met", w.name, f, n)
				}
				w.check(t, d.s)
			})
		}
	}
}

// A retry that meets another caller's submission is still a conflict.
func TestReplayedCreateKeepsConflicts(t *testing.T) {
	d := newD1(t, nil)
	sub, runs := submission("sub-1")
	if err := d.s.CreateSubmission(ctx, scope, sub, runs); err != nil {
		t.Fatal(err)
	}
	other, otherRuns := submission("sub-1")
	other.AgentName = "another agent"
	d.emu.Inject(d1emu.ServerError) // nothing applied, but the store cannot know
	if err := d.s.CreateSubmission(ctx, scope, other, otherRuns); !errors.Is(err, storage.ErrAlreadyExists) {
		t.Errorf("CreateSubmission of a taken id after a 500: %v, want ErrAlreadyExists", err)
	}
	checkWhole(t, d.s, sub, runs)
	d.emu.Inject(d1emu.ServerError)
	err := d.s.AppendAudit(ctx, storage.AuditRecord{ID: "audit-1", At: t0, Staff: "s", Org: orgA, Operation: auth.OpSupport, Reason: "r", Action: "a"})
	if err != nil {
		t.Fatal(err)
	}
	d.emu.Inject(d1emu.ServerError)
	err = d.s.AppendAudit(ctx, storage.AuditRecord{ID: "audit-1", At: t0, Staff: "s", Org: orgA, Operation: auth.OpSupport, Reason: "r", Action: "a"})
	if !errors.Is(err, storage.ErrAlreadyExists) {
		t.Errorf("AppendAudit of a used id after a 500: %v, want ErrAlreadyExists", err)
	}
}

func TestRetryLimits(t *testing.T) {
	d := newD1(t, &d1store.Options{MaxAttempts: 3, RetryDelay: time.Millisecond, MaxRetryDelay: time.Millisecond})

	// Attempts run out.
	d.emu.Inject(d1emu.ServerError, d1emu.ServerError, d1emu.ServerError)
	before := d.emu.Requests()
	if _, err := d.s.ListTasks(ctx); err == nil {
		t.Error("ListTasks after 3 failed attempts succeeded")
	}
	if n := d.emu.Requests() - before; n != 3 {
		t.Errorf("ListTasks sent %d requests, want MaxAttempts = 3", n)
	}

	// A SQL error is final.
	before = d.emu.Requests()
	sub, runs := submission("sub-1")
	if err := d.s.CreateSubmission(ctx, scope, sub, runs); err != nil {
		t.Fatal(err)
	}
	if err := d.s.CreateSubmission(ctx, scope, sub, runs); !errors.Is(err, storage.ErrAlreadyExists) {
		t.Errorf("second CreateSubmission: %v, want ErrAlreadyExists", err)
	}
	if n := d.emu.Requests() - before; n != 2 {
		t.Errorf("two creates sent %d requests, want 2 (no retry of a constraint failure)", n)
	}

}

func TestCancelWhileHung(t *testing.T) {
	hung := make(chan d1emu.Fault, 1)
	d := newD1With(t, nil, d1emu.Options{OnFault: func(f d1emu.Fault) { hung <- f }})
	d.emu.Inject(d1emu.Hang)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() {
		_, err := d.s.ListTasks(cctx)
		done <- err
	}()
	<-hung
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListTasks cancelled while its request hung: %v, want context.Canceled", err)
	}
}

func TestBadToken(t *testing.T) {
	d := newD1(t, nil)
	_, err := d1store.Open(ctx, account, database, "wrong", &d1store.Options{BaseURL: d.srv.URL + "/client/v4/", HTTPClient: d.srv.Client()})
	if err == nil {
		t.Fatal("Open with a wrong token succeeded")
	}
	for _, want := range []string{"401", "Authentication error"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
