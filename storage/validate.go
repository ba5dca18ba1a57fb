package storage

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/compatool/compatool/auth"
)

// The validation rules below are the ones every driver applies before it
// writes, so that all drivers accept and refuse the same records. Each
// failure wraps [ErrInvalid] (or [ErrAlreadyExists], where a rule says so)
// and says what to change.

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Valid reports whether st is one of the five run states.
func (st RunState) Valid() bool {
	switch st {
	case RunQueued, RunRunning, RunFinished, RunFailed, RunCancelled:
		return true
	}
	return false
}

// Validate checks a task before it is stored: a valid id, an environment, an
// active month as "2006-01", and, while the task is private and not retired,
// no Published plaintext (P6).
func (t Task) Validate() error {
	if err := ValidID(string(t.ID)); err != nil {
		return fmt.Errorf("task: %w", err)
	}
	if t.Environment == "" {
		return invalid("task %q has no Environment; name the task environment that runs it", t.ID)
	}
	if m, err := time.Parse("2006-01", t.Month); err != nil || m.Format("2006-01") != t.Month {
		return invalid("task %q has Month %q; want the active month as \"2006-01\"", t.ID, t.Month)
	}
	if t.Private && t.RetiredAt.IsZero() && len(t.Published) > 0 {
		return invalid("task %q is private and not retired but carries Published plaintext; keep its content in Sealed until retirement", t.ID)
	}
	return nil
}

// Validate checks a submission before it is stored: valid ids for itself and
// its tasks, an organisation, an owner and an image. Whether the
// organisation is the caller's is the store's check, against the scope.
func (s Submission) Validate() error {
	if err := ValidID(string(s.ID)); err != nil {
		return fmt.Errorf("submission: %w", err)
	}
	switch {
	case s.Org == "":
		return invalid("submission %q names no organisation", s.ID)
	case s.Owner == "":
		return invalid("submission %q has no Owner; set the submitting principal's subject", s.ID)
	case s.Image == "":
		return invalid("submission %q has no Image", s.ID)
	}
	for _, id := range s.Tasks {
		if err := ValidID(string(id)); err != nil {
			return fmt.Errorf("submission %q task: %w", s.ID, err)
		}
	}
	return nil
}

// ValidateRuns checks the runs CreateSubmission stores with s: each a valid
// run of s and of one of its tasks, in its org, queued and without a result.
// A run id that appears twice is [ErrAlreadyExists].
func (s Submission) ValidateRuns(runs []Run) error {
	ids := make([]RunID, len(runs))
	for i, r := range runs {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("submission %q: %w", s.ID, err)
		}
		switch {
		case r.Submission != s.ID:
			return invalid("run %q names submission %q, not %q", r.ID, r.Submission, s.ID)
		case r.Org != s.Org:
			return invalid("run %q has Org %q, not the submission's %q", r.ID, r.Org, s.Org)
		case !slices.Contains(s.Tasks, r.Task):
			return invalid("run %q is of task %q, which is not among the submission's tasks", r.ID, r.Task)
		case r.State != RunQueued || r.Result != nil:
			return invalid("run %q is %q; a new run must be %q with no Result", r.ID, r.State, RunQueued)
		}
		ids[i] = r.ID
	}
	slices.Sort(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			return fmt.Errorf("%w: run %q appears twice in submission %q", ErrAlreadyExists, ids[i], s.ID)
		}
	}
	return nil
}

// Validate checks a run before it is stored: valid ids, an organisation, a
// known state, and a result whose score is a finite number. Whether the run
// may replace a stored one is the store's check.
func (r Run) Validate() error {
	if err := ValidID(string(r.ID)); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if err := ValidID(string(r.Submission)); err != nil {
		return fmt.Errorf("run %q submission: %w", r.ID, err)
	}
	if err := ValidID(string(r.Task)); err != nil {
		return fmt.Errorf("run %q task: %w", r.ID, err)
	}
	switch {
	case r.Org == "":
		return invalid("run %q names no organisation", r.ID)
	case !r.State.Valid():
		return invalid("run %q has unknown state %q", r.ID, r.State)
	case r.Result != nil && (math.IsNaN(r.Result.Score) || math.IsInf(r.Result.Score, 0)):
		return invalid("run %q has score %v; a score must be a finite number", r.ID, r.Result.Score)
	}
	return nil
}

// Validate checks an audit record before it is appended: every field but
// Target set, and the operation one of the two staff operations (P12).
func (r AuditRecord) Validate() error {
	if err := ValidID(r.ID); err != nil {
		return fmt.Errorf("audit record: %w", err)
	}
	switch {
	case r.At.IsZero():
		return invalid("audit record %q has no time", r.ID)
	case r.Org == "":
		return invalid("audit record %q names no organisation", r.ID)
	case r.Staff == "":
		return invalid("audit record %q names no staff member", r.ID)
	case r.Operation != auth.OpSupport && r.Operation != auth.OpInfrastructure:
		return invalid("audit record %q has operation %q; want %q or %q", r.ID, r.Operation, auth.OpSupport, auth.OpInfrastructure)
	case r.Reason == "":
		return invalid("audit record %q has no reason", r.ID)
	case r.Action == "":
		return invalid("audit record %q has no action", r.ID)
	}
	return nil
}
