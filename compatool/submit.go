package compatool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

// TaskSpec is a task as an operator defines it. Its content is sealed before
// it reaches the metadata store.
type TaskSpec struct {
	ID          storage.TaskID
	Environment string
	// Month is the active month, "2006-01" (UTC).
	Month   string
	Private bool
	Content TaskContent
}

// PutTask validates spec and stores it with its content sealed under the
// task id. It creates or replaces the task; a retired task cannot be
// replaced.
func (h *Harness) PutTask(ctx context.Context, spec TaskSpec) error {
	if err := storage.ValidID(string(spec.ID)); err != nil {
		return fmt.Errorf("%w: task id: %w", ErrInvalid, err)
	}
	if _, ok := h.opts.Environments[spec.Environment]; !ok {
		return fmt.Errorf("%w: task %s: environment %q is not registered in Options.Environments", ErrInvalid, spec.ID, spec.Environment)
	}
	if _, err := parseMonth(spec.Month); err != nil {
		return fmt.Errorf("%w: task %s: %w", ErrInvalid, spec.ID, err)
	}
	goal := spec.Content.Goal
	switch {
	case strings.TrimSpace(goal) == "":
		return fmt.Errorf("%w: task %s: empty goal", ErrInvalid, spec.ID)
	case len(goal) > h.opts.MaxGoalBytes:
		return fmt.Errorf("%w: task %s: goal of %d bytes exceeds the limit of %d (Options.MaxGoalBytes)", ErrInvalid, spec.ID, len(goal), h.opts.MaxGoalBytes)
	case !utf8.ValidString(goal):
		return fmt.Errorf("%w: task %s: goal is not valid UTF-8", ErrInvalid, spec.ID)
	}
	if len(spec.Content.Config) > 0 && !json.Valid(spec.Content.Config) {
		return fmt.Errorf("%w: task %s: config is not valid JSON", ErrInvalid, spec.ID)
	}
	old, err := h.opts.Metadata.GetTask(ctx, spec.ID)
	exists := err == nil
	switch {
	case err == nil && !old.RetiredAt.IsZero():
		return fmt.Errorf("%w: task %s is retired and published; give the new task a new id", ErrInvalid, spec.ID)
	case err != nil && !errors.Is(err, storage.ErrNotFound):
		return err
	}
	plain, err := json.Marshal(spec.Content)
	if err != nil {
		return err
	}
	sealed, err := h.opts.Keys.Seal(ctx, string(spec.ID), plain)
	if err != nil {
		return fmt.Errorf("compatool: seal task %s: %w", spec.ID, err)
	}
	created := h.opts.Now().UTC()
	if exists {
		created = old.CreatedAt
	}
	return h.opts.Metadata.PutTask(ctx, storage.Task{
		ID: spec.ID, Environment: spec.Environment, Month: spec.Month, Private: spec.Private,
		Sealed: sealed, CreatedAt: created,
	})
}

func parseMonth(m string) (string, error) {
	if !monthRe.MatchString(m) {
		return "", fmt.Errorf("month %q is not of the form 2006-01", m)
	}
	return m, nil
}

var monthRe = regexp.MustCompile(`^[0-9]{4}-(0[1-9]|1[0-2])$`)

// Month returns t's month in the form of [TaskSpec.Month].
func Month(t time.Time) string { return t.UTC().Format("2006-01") }

// Submission is what a principal submits.
type Submission struct {
	// ID is optional; the harness makes one when it is empty.
	ID        storage.SubmissionID
	AgentName string
	// Image names the agent image; see Options.RequireDigest.
	Image string
	Tasks []storage.TaskID
	// Public opts the transcripts into public reading; default private.
	Public bool
}

// Limits on a submission's free-text fields.
const (
	MaxAgentNameBytes = 200
	MaxImageBytes     = 512
)

var digestRe = regexp.MustCompile(`^([a-z0-9][a-z0-9._/:-]*@)?sha256:[0-9a-f]{64}$`)

// Submit stores a submission for the principal's organisation and queues one
// run per task. It returns the stored submission.
func (h *Harness) Submit(ctx context.Context, p *auth.Principal, sub Submission) (storage.Submission, error) {
	scope, err := auth.ScopeFor(p)
	if err != nil {
		return storage.Submission{}, err
	}
	if err := h.checkSubmission(ctx, sub); err != nil {
		return storage.Submission{}, err
	}
	if sub.ID == "" {
		sub.ID = storage.SubmissionID(newID("sub"))
	}
	now := h.opts.Now().UTC()
	rec := storage.Submission{
		ID: sub.ID, Org: p.Org, Owner: p.Subject, AgentName: sub.AgentName, Image: sub.Image,
		Tasks: append([]storage.TaskID(nil), sub.Tasks...), Public: sub.Public, CreatedAt: now,
	}
	runs := make([]storage.Run, len(sub.Tasks))
	items := make([]queued, len(sub.Tasks))
	for i, t := range sub.Tasks {
		id := storage.RunID(newID("run"))
		runs[i] = storage.Run{ID: id, Submission: sub.ID, Org: p.Org, Task: t, State: storage.RunQueued, CreatedAt: now}
		items[i] = queued{run: id, org: p.Org}
	}
	if err := h.opts.Metadata.CreateSubmission(ctx, scope, rec, runs); err != nil {
		return storage.Submission{}, fmt.Errorf("compatool: store submission: %w", err)
	}
	h.queue.push(items...)
	h.log.Info("submission queued", "submission", sub.ID, "org", p.Org, "runs", len(runs))
	return rec, nil
}

func (h *Harness) checkSubmission(ctx context.Context, sub Submission) error {
	if sub.ID != "" {
		if err := storage.ValidID(string(sub.ID)); err != nil {
			return fmt.Errorf("%w: submission id: %w", ErrInvalid, err)
		}
	}
	if err := checkText("agent name", sub.AgentName, MaxAgentNameBytes); err != nil {
		return err
	}
	if err := checkText("image", sub.Image, MaxImageBytes); err != nil {
		return err
	}
	if h.opts.RequireDigest && !digestRe.MatchString(sub.Image) {
		return fmt.Errorf("%w: image %q is not digest-pinned; name it as repo@sha256:<64 hex digits>", ErrInvalid, sub.Image)
	}
	if len(sub.Tasks) == 0 {
		return fmt.Errorf("%w: a submission needs at least one task", ErrInvalid)
	}
	if len(sub.Tasks) > h.opts.MaxTasks {
		return fmt.Errorf("%w: %d tasks exceed the limit of %d per submission", ErrInvalid, len(sub.Tasks), h.opts.MaxTasks)
	}
	month := Month(h.opts.Now())
	seen := make(map[storage.TaskID]bool, len(sub.Tasks))
	for _, id := range sub.Tasks {
		if seen[id] {
			return fmt.Errorf("%w: task %s is listed twice", ErrInvalid, id)
		}
		seen[id] = true
		if err := storage.ValidID(string(id)); err != nil {
			return fmt.Errorf("%w: task id: %w", ErrInvalid, err)
		}
		t, err := h.opts.Metadata.GetTask(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("%w: unknown task %s", ErrInvalid, id)
		}
		if err != nil {
			return fmt.Errorf("compatool: load task %s: %w", id, err)
		}
		if err := servable(t, month); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if _, ok := h.opts.Environments[t.Environment]; !ok {
			return fmt.Errorf("%w: task %s needs environment %q, which this harness does not have", ErrInvalid, id, t.Environment)
		}
	}
	return nil
}

// servable reports whether a task may be run in month (P6: a private task
// is served only in its active month, and a retired one never).
func servable(t storage.Task, month string) error {
	if !t.RetiredAt.IsZero() {
		return fmt.Errorf("task %s is retired", t.ID)
	}
	if t.Private && t.Month != month {
		return fmt.Errorf("task %s is active in %s, not in %s", t.ID, t.Month, month)
	}
	return nil
}

func checkText(what, s string, max int) error {
	switch {
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(s) > max:
		return fmt.Errorf("%w: %s of %d bytes exceeds the limit of %d", ErrInvalid, what, len(s), max)
	case !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("%w: %s must be printable UTF-8", ErrInvalid, what)
	}
	return nil
}

// RewrapTasks re-wraps every sealed task's data key under the keyring's
// current key-encryption key, without re-encrypting the content: the second
// half of a key rotation (the first is making a new key current in the
// KeyProvider). It returns how many tasks it rewrapped and stops at the
// first error; a second call finishes the rest.
func (h *Harness) RewrapTasks(ctx context.Context) (int, error) {
	tasks, err := h.opts.Metadata.ListTasks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range tasks {
		if t.Sealed == nil {
			continue // retired and published
		}
		if t.Sealed, err = h.opts.Keys.Rewrap(ctx, string(t.ID), t.Sealed); err != nil {
			return n, fmt.Errorf("compatool: rewrap task %s: %w", t.ID, err)
		}
		if err := h.opts.Metadata.PutTask(ctx, t); err != nil {
			return n, fmt.Errorf("compatool: store rewrapped task %s: %w", t.ID, err)
		}
		n++
	}
	return n, nil
}
