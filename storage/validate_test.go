package storage_test

import (
	"errors"
	"math"
	"testing"

	"github.com/compatool/compatool/storage"
)

func TestValidate(t *testing.T) {
	sub := storage.Submission{ID: "sub-1", Org: "org-a", Owner: "u", Image: "img", Tasks: []storage.TaskID{"task-1", "task-2"}}
	run := func(change func(*storage.Run)) storage.Run {
		r := storage.Run{ID: "sub-1.task-1", Submission: "sub-1", Org: "org-a", Task: "task-1", State: storage.RunQueued}
		if change != nil {
			change(&r)
		}
		return r
	}
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"a valid run", run(nil).Validate(), nil},
		{"a run without org", run(func(r *storage.Run) { r.Org = "" }).Validate(), storage.ErrInvalid},
		{"a run with a bad task id", run(func(r *storage.Run) { r.Task = "a b" }).Validate(), storage.ErrInvalid},
		{"a run in no state", run(func(r *storage.Run) { r.State = "" }).Validate(), storage.ErrInvalid},
		{"a NaN score", run(func(r *storage.Run) { r.Result = &storage.Result{Score: math.NaN()} }).Validate(), storage.ErrInvalid},
		{"an infinite score", run(func(r *storage.Run) { r.Result = &storage.Result{Score: math.Inf(1)} }).Validate(), storage.ErrInvalid},
		{"a valid submission", sub.Validate(), nil},
		{"a submission without org", storage.Submission{ID: "s", Owner: "u", Image: "i"}.Validate(), storage.ErrInvalid},
		{"valid new runs", sub.ValidateRuns([]storage.Run{run(nil), run(func(r *storage.Run) { r.ID, r.Task = "sub-1.task-2", "task-2" })}), nil},
		{"a run id twice", sub.ValidateRuns([]storage.Run{run(nil), run(nil)}), storage.ErrAlreadyExists},
		{"a new run not queued", sub.ValidateRuns([]storage.Run{run(func(r *storage.Run) { r.State = storage.RunRunning })}), storage.ErrInvalid},
		{"a task without month", storage.Task{ID: "t", Environment: "e"}.Validate(), storage.ErrInvalid},
		{"an audit record without reason", storage.AuditRecord{ID: "a"}.Validate(), storage.ErrInvalid},
	} {
		if (c.want == nil) != (c.err == nil) || !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	for _, st := range []storage.RunState{storage.RunQueued, storage.RunRunning, storage.RunFinished, storage.RunFailed, storage.RunCancelled} {
		if !st.Valid() {
			t.Errorf("%s.Valid() = false", st)
		}
	}
	if storage.RunState("paused").Valid() {
		t.Error(`"paused".Valid() = true`)
	}
}
