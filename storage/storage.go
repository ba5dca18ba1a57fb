// Package storage defines Compatool's records and the two stores that keep
// them: a [MetadataStore] for submissions, runs, results, tasks and the audit
// log, and a [TranscriptStore] for run transcripts.
//
// The records are the data categories of the security page, and the stores
// keep promises P4, P5, P6, P9, P11 and P12 of DESIGN.md:
//
//   - every tenant read or write takes an [auth.Scope], and a driver answers
//     another organisation's ids exactly as it answers ids that do not exist
//     ([ErrNotFound]), so existence is not leaked;
//   - erasing a submission deletes its runs and results with it;
//   - private task content reaches a store only sealed ([Task.Sealed]);
//   - a [TranscriptStore] accepts only a [RedactedTranscript], which only
//     package redact can make, so an unredacted transcript cannot be stored by
//     mistake;
//   - the audit log can be appended to and read, never changed.
//
// Drivers live in subpackages (memstore, sqlitestore, d1store, filestore,
// r2store) and all pass the conformance suite in storagetest.
//
// # Errors
//
// Drivers wrap [ErrNotFound], [ErrAlreadyExists], [ErrInvalid] and
// [ErrInvalidScope]; callers test with errors.Is.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/redacted"
)

var (
	// ErrNotFound reports a record that does not exist or belongs to another
	// organisation than the scope's.
	ErrNotFound = errors.New("storage: not found")
	// ErrAlreadyExists reports a create whose id is taken (in any org).
	ErrAlreadyExists = errors.New("storage: already exists")
	// ErrInvalid reports a record that fails validation; nothing was written.
	ErrInvalid = errors.New("storage: invalid record")
	// ErrInvalidScope reports a tenant call made with the zero [auth.Scope].
	ErrInvalidScope = errors.New("storage: a scope naming an organisation is required")
)

// CheckScope returns [ErrInvalidScope] unless s names an organisation. Drivers
// call it first in every tenant method.
func CheckScope(s auth.Scope) error {
	if !s.Valid() {
		return ErrInvalidScope
	}
	return nil
}

type (
	// SubmissionID identifies a submission.
	SubmissionID string
	// RunID identifies a run: one submission against one task.
	RunID string
	// TaskID identifies a benchmark task.
	TaskID string
)

// MaxIDBytes bounds every id.
const MaxIDBytes = 128

// ValidID reports whether id is a usable record id: 1 to [MaxIDBytes] bytes of
// ASCII letters, digits, '-', '_', '.' and ':'.
func ValidID(id string) error {
	if id == "" || len(id) > MaxIDBytes {
		return fmt.Errorf("%w: id must be 1 to %d bytes, got %d", ErrInvalid, MaxIDBytes, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':'
		if !ok {
			return fmt.Errorf("%w: id %q has character %q; use letters, digits, '-', '_', '.', ':'", ErrInvalid, id, c)
		}
	}
	return nil
}

// Submission is a submitted agent and the tasks it runs against. It is
// submission metadata (P4): kept until erased.
type Submission struct {
	ID    SubmissionID
	Org   auth.OrgID
	Owner string // subject of the principal who submitted
	// AgentName is the submitter's name for the agent.
	AgentName string
	// Image names the agent image, digest-pinned for container sandboxes.
	Image string
	Tasks []TaskID
	// Public opts the submission's transcripts into public reading (P9).
	// False by default.
	Public    bool
	CreatedAt time.Time
}

// RunState is where a run is in its lifecycle.
type RunState string

const (
	RunQueued    RunState = "queued"
	RunRunning   RunState = "running"
	RunFinished  RunState = "finished"  // the agent ran and was graded
	RunFailed    RunState = "failed"    // see Result.Failure
	RunCancelled RunState = "cancelled" // cancelled before or while running
)

// Terminal reports whether no further transition follows s.
func (s RunState) Terminal() bool {
	return s == RunFinished || s == RunFailed || s == RunCancelled
}

// Failure says whose fault a failed run is.
type Failure string

const (
	FailureNone Failure = ""
	// FailureAgent is the agent's own failure: non-zero exit, timeout, crash.
	FailureAgent Failure = "agent"
	// FailureInfrastructure is the platform's failure: the sandbox did not
	// start, a store failed, the host crashed.
	FailureInfrastructure Failure = "infrastructure"
)

// Run is one submission run against one task.
type Run struct {
	ID         RunID
	Submission SubmissionID
	Org        auth.OrgID
	Task       TaskID
	State      RunState
	CreatedAt  time.Time
	StartedAt  time.Time // zero until running
	FinishedAt time.Time // zero until terminal
	// Result is set once the run is terminal.
	Result *Result
}

// Result is a terminal run's outcome.
type Result struct {
	Passed bool
	Score  float64
	// Detail is the grader's or the failure's text, redacted like the
	// transcript.
	Detail  string
	Failure Failure
	Exit    Exit
	// ToolCalls counts the tool calls the agent made through the gateway.
	ToolCalls int
	// AgentTime is the time the sandbox ran.
	AgentTime time.Duration
}

// Exit is how the agent's sandbox ended.
type Exit struct {
	Code     int    `json:"code"`
	TimedOut bool   `json:"timed_out"`
	Reason   string `json:"reason"`
}

// Task is a benchmark task as stored. Its content (goal and configuration)
// is sealed while the task is private (P6); after retirement the plaintext is
// published in Published.
type Task struct {
	ID TaskID
	// Environment names the task environment (tool server and grader) the
	// harness uses to run it.
	Environment string
	// Month is the active month, "2006-01" in UTC. A private task is served
	// only during it.
	Month   string
	Private bool
	// Sealed is the envelope-encrypted content, bound to the task id.
	Sealed []byte
	// Published is the plaintext content, set on retirement.
	Published []byte
	// RetiredAt is zero until the task is retired.
	RetiredAt time.Time
	CreatedAt time.Time
}

// AuditRecord is one staff access to an organisation's data (P12). It is
// written before any data is returned.
type AuditRecord struct {
	ID        string
	At        time.Time
	Staff     string // subject
	Org       auth.OrgID
	Operation auth.Operation
	Reason    string
	// Action names what was read, e.g. "results" or "transcript".
	Action string
	// Target is the id read.
	Target string
}

// Page selects a slice of a listing ordered by id.
type Page struct {
	// After, when set, starts the listing after this id.
	After string
	// Limit caps the number of records; 0 means [DefaultPageLimit], and
	// values above [MaxPageLimit] are capped.
	Limit int
}

const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// N returns the effective limit of p.
func (p Page) N() int {
	switch {
	case p.Limit <= 0:
		return DefaultPageLimit
	case p.Limit > MaxPageLimit:
		return MaxPageLimit
	}
	return p.Limit
}

// MetadataStore keeps tasks, submissions, runs (with their results) and the
// audit log.
//
// Implementations must be safe for concurrent use and honour ctx on every
// call (return ctx.Err() wrapped when it is done). Tenant methods take an
// [auth.Scope] first after ctx, return [ErrInvalidScope] for the zero scope,
// and treat a record of another organisation as absent. Records returned are
// copies: changing them does not change the store.
type MetadataStore interface {
	// PutTask creates or replaces a task. Tasks are platform data, not
	// tenant data.
	PutTask(ctx context.Context, t Task) error
	// GetTask returns a task or ErrNotFound.
	GetTask(ctx context.Context, id TaskID) (Task, error)
	// ListTasks returns every task ordered by id.
	ListTasks(ctx context.Context) ([]Task, error)

	// CreateSubmission stores a submission and its queued runs atomically:
	// all or nothing. Submission and run ids are unique across orgs
	// (ErrAlreadyExists). The submission's and the runs' Org must be the
	// scope's (ErrInvalid otherwise).
	CreateSubmission(ctx context.Context, s auth.Scope, sub Submission, runs []Run) error
	// GetSubmission returns a submission of the scope's org or ErrNotFound.
	GetSubmission(ctx context.Context, s auth.Scope, id SubmissionID) (Submission, error)
	// ListSubmissions lists the scope's submissions ordered by id.
	ListSubmissions(ctx context.Context, s auth.Scope, p Page) ([]Submission, error)
	// SetPublic sets a submission's publication flag. ErrNotFound if absent.
	SetPublic(ctx context.Context, s auth.Scope, id SubmissionID, public bool) error
	// DeleteSubmission deletes a submission with all its runs and results.
	// ErrNotFound if absent (a second delete returns ErrNotFound).
	DeleteSubmission(ctx context.Context, s auth.Scope, id SubmissionID) error

	// GetRun returns a run of the scope's org or ErrNotFound.
	GetRun(ctx context.Context, s auth.Scope, id RunID) (Run, error)
	// ListRuns lists the runs of one submission ordered by id; ErrNotFound if
	// the submission is absent.
	ListRuns(ctx context.Context, s auth.Scope, sub SubmissionID, p Page) ([]Run, error)
	// UpdateRun replaces the state, timestamps and result of an existing run.
	// Its Org, Submission and Task must not change (ErrInvalid); ErrNotFound
	// if absent.
	UpdateRun(ctx context.Context, s auth.Scope, r Run) error
	// RunsInState lists runs of every org in state st ordered by id, for the
	// harness's own recovery after a crash. It is not a tenant read.
	RunsInState(ctx context.Context, st RunState, p Page) ([]Run, error)
	// PublicRun returns a run whose submission is public, or ErrNotFound.
	PublicRun(ctx context.Context, id RunID) (Run, error)

	// AppendAudit appends an audit record. Records cannot be changed or
	// deleted through this interface, not even by erasure.
	AppendAudit(ctx context.Context, r AuditRecord) error
	// ListAudit lists the audit records about the scope's org ordered by
	// time, then id.
	ListAudit(ctx context.Context, s auth.Scope, p Page) ([]AuditRecord, error)
}

// RedactedTranscript is an encoded transcript that has passed a redactor.
// Only package redact can make one; the zero value is refused by every store
// with ErrInvalid.
type RedactedTranscript = redacted.Transcript

// TranscriptInfo describes a stored transcript.
type TranscriptInfo struct {
	Run        RunID
	Submission SubmissionID
	Org        auth.OrgID
	Size       int64
	StoredAt   time.Time
	Archived   bool
}

// TranscriptStore keeps run transcripts (P5, P8).
//
// Implementations must be safe for concurrent use, honour ctx, and write
// atomically: a transcript is either whole or absent, never torn, even if ctx
// is cancelled or the process dies mid-write. Tenant methods follow the same
// scope rules as [MetadataStore].
type TranscriptStore interface {
	// Put stores t under its run id, replacing any previous transcript of the
	// run. t's org must be the scope's (ErrInvalid otherwise); the zero t is
	// ErrInvalid. StoredAt is set from the store's clock.
	Put(ctx context.Context, s auth.Scope, t RedactedTranscript) error
	// Get opens a transcript, live or archived. The caller closes the reader.
	// ErrNotFound if absent.
	Get(ctx context.Context, s auth.Scope, run RunID) (io.ReadCloser, TranscriptInfo, error)
	// Delete removes a transcript, live or archived. Deleting a missing
	// transcript succeeds.
	Delete(ctx context.Context, s auth.Scope, run RunID) error
	// Archive moves a live transcript to the archive area. Archiving an
	// archived transcript succeeds; ErrNotFound if absent.
	Archive(ctx context.Context, s auth.Scope, run RunID) error
	// Restore moves an archived transcript back to the live area. Restoring a
	// live transcript succeeds; ErrNotFound if absent.
	Restore(ctx context.Context, s auth.Scope, run RunID) error
	// StoredBefore lists live (not archived) transcripts of every org stored
	// before t, ordered by run id, for the retention sweeper. It is not a
	// tenant read.
	StoredBefore(ctx context.Context, t time.Time, p Page) ([]TranscriptInfo, error)
}
