package compatool

import (
	"context"
	"fmt"
	"io"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

// access checks a read's scope and, for a staff scope, writes the audit
// record (P12) before any data is read. If the record cannot be written the
// read is refused.
func (h *Harness) access(ctx context.Context, s auth.Scope, action, target string) error {
	if err := storage.CheckScope(s); err != nil {
		return err
	}
	a := s.Staff()
	if a == nil {
		return nil
	}
	rec := storage.AuditRecord{
		ID: newID("aud"), At: h.opts.Now().UTC(), Staff: a.Staff, Org: a.Org,
		Operation: a.Operation, Reason: a.Reason, Action: action, Target: target,
	}
	if err := h.opts.Metadata.AppendAudit(ctx, rec); err != nil {
		return fmt.Errorf("compatool: staff access refused: the audit record could not be written: %w", err)
	}
	h.log.Info("staff access", "staff", a.Staff, "org", a.Org, "operation", a.Operation, "action", action, "target", target)
	return nil
}

// writable refuses staff scopes: staff may read for support or
// infrastructure, never act on an organisation's behalf.
func writable(s auth.Scope, action string) error {
	if err := storage.CheckScope(s); err != nil {
		return err
	}
	if s.Staff() != nil {
		return fmt.Errorf("%w: staff cannot %s on an organisation's behalf", auth.ErrForbidden, action)
	}
	return nil
}

// Submission returns one of the scope's submissions.
func (h *Harness) Submission(ctx context.Context, s auth.Scope, id storage.SubmissionID) (storage.Submission, error) {
	if err := h.access(ctx, s, "submission", string(id)); err != nil {
		return storage.Submission{}, err
	}
	return h.opts.Metadata.GetSubmission(ctx, s, id)
}

// Submissions lists the scope's submissions.
func (h *Harness) Submissions(ctx context.Context, s auth.Scope, p storage.Page) ([]storage.Submission, error) {
	if err := h.access(ctx, s, "submissions", ""); err != nil {
		return nil, err
	}
	return h.opts.Metadata.ListSubmissions(ctx, s, p)
}

// Runs lists a submission's runs with their results.
func (h *Harness) Runs(ctx context.Context, s auth.Scope, sub storage.SubmissionID, p storage.Page) ([]storage.Run, error) {
	if err := h.access(ctx, s, "results", string(sub)); err != nil {
		return nil, err
	}
	return h.opts.Metadata.ListRuns(ctx, s, sub, p)
}

// Run returns one run with its result.
func (h *Harness) Run(ctx context.Context, s auth.Scope, id storage.RunID) (storage.Run, error) {
	if err := h.access(ctx, s, "result", string(id)); err != nil {
		return storage.Run{}, err
	}
	return h.opts.Metadata.GetRun(ctx, s, id)
}

// Transcript opens a run's stored (redacted) transcript. The caller closes
// the reader.
func (h *Harness) Transcript(ctx context.Context, s auth.Scope, id storage.RunID) (io.ReadCloser, storage.TranscriptInfo, error) {
	if err := h.access(ctx, s, "transcript", string(id)); err != nil {
		return nil, storage.TranscriptInfo{}, err
	}
	return h.opts.Transcripts.Get(ctx, s, id)
}

// PublicTranscript opens the transcript of a run whose submission was
// published; any other run is not found.
func (h *Harness) PublicTranscript(ctx context.Context, id storage.RunID) (io.ReadCloser, storage.TranscriptInfo, error) {
	run, err := h.opts.Metadata.PublicRun(ctx, id)
	if err != nil {
		return nil, storage.TranscriptInfo{}, err
	}
	return h.opts.Transcripts.Get(ctx, auth.InternalScope(run.Org), id)
}

// Audit lists the audit records of staff access to the scope's
// organisation.
func (h *Harness) Audit(ctx context.Context, s auth.Scope, p storage.Page) ([]storage.AuditRecord, error) {
	if err := h.access(ctx, s, "audit", ""); err != nil {
		return nil, err
	}
	return h.opts.Metadata.ListAudit(ctx, s, p)
}

// Publish opts a submission's transcripts into public reading (P9).
func (h *Harness) Publish(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	if err := writable(s, "publish"); err != nil {
		return err
	}
	return h.opts.Metadata.SetPublic(ctx, s, id, true)
}

// Unpublish makes a published submission's transcripts private again.
func (h *Harness) Unpublish(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	if err := writable(s, "unpublish"); err != nil {
		return err
	}
	return h.opts.Metadata.SetPublic(ctx, s, id, false)
}

// Cancel cancels a submission's queued and running runs. Running runs are
// stopped and their sandboxes destroyed; their state becomes cancelled.
func (h *Harness) Cancel(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	if err := writable(s, "cancel"); err != nil {
		return err
	}
	return h.eachRunOf(ctx, s, id, func(r storage.Run) error {
		switch r.State {
		case storage.RunQueued:
			r.State, r.FinishedAt = storage.RunCancelled, h.opts.Now().UTC()
			r.Result = &storage.Result{Detail: "the run was cancelled before it started"}
			if err := h.opts.Metadata.UpdateRun(ctx, s, r); err != nil {
				return err
			}
			h.changed.notify()
		case storage.RunRunning:
			h.mu.Lock()
			if cancel := h.running[r.ID]; cancel != nil {
				cancel(context.Canceled)
			}
			h.mu.Unlock()
		}
		return nil
	})
}

// Erase deletes a submission with its runs, results and transcripts (P4).
// Runs in flight are cancelled first. Erase is safe to call again after a
// failure; once everything is gone it returns storage.ErrNotFound. Audit
// records are kept: they are the log of staff access.
func (h *Harness) Erase(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	if err := writable(s, "erase"); err != nil {
		return err
	}
	if err := h.Cancel(ctx, s, id); err != nil {
		return err
	}
	err := h.eachRunOf(ctx, s, id, func(r storage.Run) error {
		return h.opts.Transcripts.Delete(ctx, s, r.ID)
	})
	if err != nil {
		return fmt.Errorf("compatool: erase transcripts of %s: %w", id, err)
	}
	// A run still finishing after this point finds its record gone and
	// deletes the transcript it wrote (see finish).
	return h.opts.Metadata.DeleteSubmission(ctx, s, id)
}

func (h *Harness) eachRunOf(ctx context.Context, s auth.Scope, id storage.SubmissionID, f func(storage.Run) error) error {
	return eachPage(func(p storage.Page) ([]storage.Run, error) { return h.opts.Metadata.ListRuns(ctx, s, id, p) }, f)
}

// Wait blocks until every run of a submission is terminal, then returns
// them.
func (h *Harness) Wait(ctx context.Context, s auth.Scope, id storage.SubmissionID) ([]storage.Run, error) {
	if err := storage.CheckScope(s); err != nil {
		return nil, err
	}
	for {
		changed := h.changed.wait()
		var runs []storage.Run
		done := true
		err := h.eachRunOf(ctx, s, id, func(r storage.Run) error {
			runs = append(runs, r)
			done = done && r.State.Terminal()
			return nil
		})
		if err != nil {
			return nil, err
		}
		if done {
			return runs, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}
