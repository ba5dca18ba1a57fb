// Package sqlmeta is the SQL [storage.MetadataStore] that sqlitestore and
// d1store share: the numbered schema migrations, every statement, and the
// store logic, written once against an [Executor] so that the two drivers
// cannot drift. A driver supplies only the executor: how a list of
// statements reaches its database and runs there as one transaction.
//
// It keeps the storage promises of DESIGN.md the SQL way: every tenant
// statement names the scope's org (P11), erasure deletes a submission's runs
// in the same transaction (P4), the audit table refuses UPDATE and DELETE
// with triggers (P12), and the submission metadata no query needs (owner,
// agent name, image, tasks, creation time) is sealed with package envelope
// when a keyring is configured.
//
// # Retries
//
// Every write is written to be safe when an executor replays it after an
// attempt whose outcome it could not see ([Result.Replayed]):
//
//   - PutTask (an upsert), SetPublic and UpdateRun (which set every column
//     to the caller's values) are idempotent: a replay writes the same row;
//   - CreateSubmission and AppendAudit store a random write id of the call
//     with the row; a replay that meets a taken id reads the row's write id
//     and reports success when it is the call's own;
//   - DeleteSubmission reports success when a replay finds the submission
//     gone, since the lost attempt may have deleted it;
//   - Migrate re-reads schema_migrations when applying a file fails.
package sqlmeta

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
)

// MaxRowBytes bounds the arguments of one statement, so of one row: D1
// refuses rows over 2 MB, and the bound leaves room for SQL and JSON
// overhead. A write over it fails with storage.ErrInvalid.
const MaxRowBytes = 1 << 20

// Stmt is one statement and its arguments, all text.
type Stmt struct {
	SQL  string
	Args []string
}

// Result is what an [Executor] returns for a list of statements.
type Result struct {
	// Rows holds the rows each statement yielded, in statement order.
	Rows [][]Row
	// Replayed reports that the executor sent the statements again after
	// an attempt whose outcome it could not see: that attempt may have
	// committed, so a constraint failure (or a missing row) may be its
	// doing. It may be set whether or not the error is nil.
	Replayed bool
}

func (r Result) rows(i int) []Row {
	if i >= len(r.Rows) {
		return nil
	}
	return r.Rows[i]
}

// Executor runs statements against one database.
type Executor interface {
	// Exec runs stmts in order as one transaction: all or nothing. write
	// says whether any statement may change the database. The error of a
	// statement carries the database's message (for a constraint,
	// SQLite's "UNIQUE constraint failed: ..."), and a done ctx yields an
	// error wrapping ctx.Err(). Exec must be safe for concurrent use.
	Exec(ctx context.Context, write bool, stmts ...Stmt) (Result, error)
}

// Config configures a [Store].
type Config struct {
	// Name prefixes every error, e.g. "sqlitestore".
	Name string
	// Keyring, when set, seals submission metadata.
	Keyring *envelope.Keyring
	// Now stamps schema_migrations; nil means time.Now.
	Now func() time.Time
	// Logger receives a line per applied migration; nil discards.
	Logger *slog.Logger
}

// Store is a [storage.MetadataStore] over an [Executor]. It is safe for
// concurrent use if its executor is.
type Store struct {
	x    Executor
	name string
	keys *envelope.Keyring
	now  func() time.Time
	log  *slog.Logger
}

var _ storage.MetadataStore = (*Store)(nil)

// New returns a store that runs its statements with x. Call [Store.Migrate]
// before using it.
func New(x Executor, c Config) *Store {
	s := &Store{x: x, name: c.Name, keys: c.Keyring, now: c.Now, log: c.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

func (s *Store) begin(ctx context.Context, method string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s: %w", s.name, method, err)
	}
	return nil
}

func (s *Store) beginScoped(ctx context.Context, method string, sc auth.Scope) error {
	if err := s.begin(ctx, method); err != nil {
		return err
	}
	if err := storage.CheckScope(sc); err != nil {
		return fmt.Errorf("%s: %s: %w", s.name, method, err)
	}
	return nil
}

// checkID wraps an invalid id's error.
func (s *Store) checkID(what, id string) error {
	if err := storage.ValidID(id); err != nil {
		return fmt.Errorf("%s: %s: %w", s.name, what, err)
	}
	return nil
}

func (s *Store) exec(ctx context.Context, method string, write bool, stmts ...Stmt) (Result, error) {
	for _, st := range stmts {
		if n := argBytes(st.Args); n > MaxRowBytes {
			return Result{}, fmt.Errorf("%s: %s: %w: a row of %d bytes exceeds the SQL stores' limit of %d bytes; store less",
				s.name, method, storage.ErrInvalid, n, MaxRowBytes)
		}
	}
	res, err := s.x.Exec(ctx, write, stmts...)
	if err != nil {
		return res, fmt.Errorf("%s: %s: %w", s.name, method, err)
	}
	return res, nil
}

func argBytes(args []string) int {
	n := 0
	for _, a := range args {
		n += len(a)
	}
	return n
}

// isUnique reports a uniqueness violation; both SQLite and D1 pass SQLite's
// message through.
func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

func newWriteID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Store) notFound(what string, id any) error {
	return fmt.Errorf("%s: %s %q: %w", s.name, what, id, storage.ErrNotFound)
}

// Tasks.

// PutTask implements [storage.MetadataStore].
func (s *Store) PutTask(ctx context.Context, t storage.Task) error {
	if err := s.begin(ctx, "PutTask"); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	args, err := taskArgs(t)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	_, err = s.exec(ctx, "PutTask", true, Stmt{SQL: sqlPutTask, Args: args})
	return err
}

// GetTask implements [storage.MetadataStore].
func (s *Store) GetTask(ctx context.Context, id storage.TaskID) (storage.Task, error) {
	if err := s.begin(ctx, "GetTask"); err != nil {
		return storage.Task{}, err
	}
	if err := s.checkID("task", string(id)); err != nil {
		return storage.Task{}, err
	}
	res, err := s.exec(ctx, "GetTask", false, Stmt{SQL: sqlGetTask, Args: []string{string(id)}})
	if err != nil {
		return storage.Task{}, err
	}
	rows := res.rows(0)
	if len(rows) == 0 {
		return storage.Task{}, s.notFound("task", id)
	}
	t, err := scanTask(rows[0])
	if err != nil {
		return storage.Task{}, fmt.Errorf("%s: %w", s.name, err)
	}
	return t, nil
}

// ListTasks implements [storage.MetadataStore].
func (s *Store) ListTasks(ctx context.Context) ([]storage.Task, error) {
	if err := s.begin(ctx, "ListTasks"); err != nil {
		return nil, err
	}
	res, err := s.exec(ctx, "ListTasks", false, Stmt{SQL: sqlListTask})
	if err != nil {
		return nil, err
	}
	out := make([]storage.Task, 0, len(res.rows(0)))
	for _, row := range res.rows(0) {
		t, err := scanTask(row)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// Submissions.

// SubmissionArgs are the arguments of [SQLInsertSubmission] for sub, with
// its metadata sealed when the store has a keyring.
func (s *Store) SubmissionArgs(ctx context.Context, sub storage.Submission, writeID string) ([]string, error) {
	created, err := timeText(sub.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("submission %q: %w", sub.ID, err)
	}
	meta, err := json.Marshal(submissionMeta{Owner: sub.Owner, AgentName: sub.AgentName, Image: sub.Image, Tasks: sub.Tasks, CreatedAt: created})
	if err != nil {
		return nil, err
	}
	text, sealed := string(meta), false
	if s.keys != nil {
		b, err := s.keys.Seal(ctx, metaRecordID(sub.Org, sub.ID), meta)
		if err != nil {
			return nil, fmt.Errorf("sealing the metadata of submission %q: %w", sub.ID, err)
		}
		text, sealed = base64.StdEncoding.EncodeToString(b), true
	}
	return []string{string(sub.ID), string(sub.Org), text, boolText(sealed), writeID}, nil
}

func (s *Store) scanSubmission(ctx context.Context, row Row) (storage.Submission, error) {
	sub := storage.Submission{ID: storage.SubmissionID(row.str(0)), Org: auth.OrgID(row.str(1)), Public: row.bool(2)}
	meta := []byte(row.str(3))
	if row.bool(4) {
		if s.keys == nil {
			return storage.Submission{}, fmt.Errorf("%s: submission %q: its metadata is sealed; set Options.Keyring to the keyring that sealed it", s.name, sub.ID)
		}
		b, err := base64.StdEncoding.DecodeString(string(meta))
		if err == nil {
			meta, err = s.keys.Open(ctx, metaRecordID(sub.Org, sub.ID), b)
		}
		if err != nil {
			return storage.Submission{}, fmt.Errorf("%s: opening the metadata of submission %q: %w", s.name, sub.ID, err)
		}
	}
	var m submissionMeta
	if err := json.Unmarshal(meta, &m); err != nil {
		return storage.Submission{}, fmt.Errorf("%s: submission %q: stored metadata: %w", s.name, sub.ID, err)
	}
	created, err := parseTime(m.CreatedAt)
	if err != nil {
		return storage.Submission{}, fmt.Errorf("%s: submission %q: stored time: %w", s.name, sub.ID, err)
	}
	sub.Owner, sub.AgentName, sub.Image, sub.Tasks, sub.CreatedAt = m.Owner, m.AgentName, m.Image, m.Tasks, created
	return sub, nil
}

// CreateSubmission implements [storage.MetadataStore] in one transaction.
func (s *Store) CreateSubmission(ctx context.Context, sc auth.Scope, sub storage.Submission, runs []storage.Run) error {
	if err := s.beginScoped(ctx, "CreateSubmission", sc); err != nil {
		return err
	}
	if err := sub.Validate(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if sub.Org != sc.Org() {
		return fmt.Errorf("%s: submission %q has Org %q but the scope is of org %q: %w", s.name, sub.ID, sub.Org, sc.Org(), storage.ErrInvalid)
	}
	if err := sub.ValidateRuns(runs); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	writeID := newWriteID()
	args, err := s.SubmissionArgs(ctx, sub, writeID)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	stmts := []Stmt{{SQL: SQLInsertSubmission, Args: args}}
	// Runs go several to a statement: a submission of 1000 tasks is 92
	// statements, not 1001.
	for chunk := range slices.Chunk(runs, runsPerInsert) {
		st := Stmt{SQL: SQLInsertRun + strings.Repeat(", "+runValues, len(chunk)-1)}
		for _, r := range chunk {
			args, err := RunArgs(r)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			st.Args = append(st.Args, args...)
		}
		stmts = append(stmts, st)
	}
	res, err := s.exec(ctx, "CreateSubmission", true, stmts...)
	if !isUnique(err) {
		return err
	}
	if res.Replayed && s.wroteID(ctx, sqlWriteID, string(sub.ID), writeID) {
		// The attempt whose answer was lost committed the whole batch.
		return nil
	}
	return fmt.Errorf("%s: submission %q or one of its runs: %w (%v)", s.name, sub.ID, storage.ErrAlreadyExists, err)
}

// wroteID reports whether the row id of the table read by query carries
// writeID, i.e. whether this call wrote it.
func (s *Store) wroteID(ctx context.Context, query, id, writeID string) bool {
	res, err := s.x.Exec(ctx, false, Stmt{SQL: query, Args: []string{id}})
	rows := res.rows(0)
	return err == nil && len(rows) == 1 && rows[0].str(0) == writeID
}

// GetSubmission implements [storage.MetadataStore].
func (s *Store) GetSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) (storage.Submission, error) {
	if err := s.beginScoped(ctx, "GetSubmission", sc); err != nil {
		return storage.Submission{}, err
	}
	if err := s.checkID("submission", string(id)); err != nil {
		return storage.Submission{}, err
	}
	res, err := s.exec(ctx, "GetSubmission", false, Stmt{SQL: sqlGetSubmission, Args: []string{string(id), string(sc.Org())}})
	if err != nil {
		return storage.Submission{}, err
	}
	rows := res.rows(0)
	if len(rows) == 0 {
		return storage.Submission{}, s.notFound("submission", id)
	}
	return s.scanSubmission(ctx, rows[0])
}

// ListSubmissions implements [storage.MetadataStore].
func (s *Store) ListSubmissions(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.Submission, error) {
	if err := s.beginScoped(ctx, "ListSubmissions", sc); err != nil {
		return nil, err
	}
	res, err := s.exec(ctx, "ListSubmissions", false, Stmt{SQL: sqlListSubmissions,
		Args: []string{string(sc.Org()), p.After, strconv.Itoa(p.N())}})
	if err != nil {
		return nil, err
	}
	out := make([]storage.Submission, 0, len(res.rows(0)))
	for _, row := range res.rows(0) {
		sub, err := s.scanSubmission(ctx, row)
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	return out, nil
}

// SetPublic implements [storage.MetadataStore].
func (s *Store) SetPublic(ctx context.Context, sc auth.Scope, id storage.SubmissionID, public bool) error {
	if err := s.beginScoped(ctx, "SetPublic", sc); err != nil {
		return err
	}
	if err := s.checkID("submission", string(id)); err != nil {
		return err
	}
	res, err := s.exec(ctx, "SetPublic", true, Stmt{SQL: sqlSetPublic, Args: []string{boolText(public), string(id), string(sc.Org())}})
	if err != nil {
		return err
	}
	if len(res.rows(0)) == 0 {
		return s.notFound("submission", id)
	}
	return nil
}

// DeleteSubmission implements [storage.MetadataStore]: the submission and
// its runs go in one transaction.
func (s *Store) DeleteSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) error {
	if err := s.beginScoped(ctx, "DeleteSubmission", sc); err != nil {
		return err
	}
	if err := s.checkID("submission", string(id)); err != nil {
		return err
	}
	key := []string{string(id), string(sc.Org())}
	res, err := s.exec(ctx, "DeleteSubmission", true, Stmt{SQL: sqlDeleteRuns, Args: key}, Stmt{SQL: sqlDeleteSubmission, Args: key})
	if err != nil {
		return err
	}
	if len(res.rows(1)) == 0 && !res.Replayed {
		return s.notFound("submission", id)
	}
	return nil
}

// Runs.

// GetRun implements [storage.MetadataStore].
func (s *Store) GetRun(ctx context.Context, sc auth.Scope, id storage.RunID) (storage.Run, error) {
	if err := s.beginScoped(ctx, "GetRun", sc); err != nil {
		return storage.Run{}, err
	}
	if err := s.checkID("run", string(id)); err != nil {
		return storage.Run{}, err
	}
	res, err := s.exec(ctx, "GetRun", false, Stmt{SQL: sqlGetRun, Args: []string{string(id), string(sc.Org())}})
	if err != nil {
		return storage.Run{}, err
	}
	return s.oneRun(res.rows(0), "run", id)
}

func (s *Store) oneRun(rows []Row, what string, id storage.RunID) (storage.Run, error) {
	if len(rows) == 0 {
		return storage.Run{}, s.notFound(what, id)
	}
	r, err := scanRun(rows[0])
	if err != nil {
		return storage.Run{}, fmt.Errorf("%s: %w", s.name, err)
	}
	return r, nil
}

func (s *Store) scanRuns(rows []Row) ([]storage.Run, error) {
	out := make([]storage.Run, 0, len(rows))
	for _, row := range rows {
		r, err := scanRun(row)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// ListRuns implements [storage.MetadataStore] in one statement.
func (s *Store) ListRuns(ctx context.Context, sc auth.Scope, sub storage.SubmissionID, p storage.Page) ([]storage.Run, error) {
	if err := s.beginScoped(ctx, "ListRuns", sc); err != nil {
		return nil, err
	}
	if err := s.checkID("submission", string(sub)); err != nil {
		return nil, err
	}
	org := string(sc.Org())
	res, err := s.exec(ctx, "ListRuns", false, Stmt{SQL: sqlListRuns,
		Args: []string{string(sub), org, p.After, strconv.Itoa(p.N()), string(sub), org}})
	if err != nil {
		return nil, err
	}
	// The row of NULLs says the submission exists; the others are runs.
	found, rows := false, res.rows(0)
	runs := make([]Row, 0, len(rows))
	for _, row := range rows {
		if row.str(0) == "" {
			found = true
		} else {
			runs = append(runs, row)
		}
	}
	if !found {
		return nil, s.notFound("submission", sub)
	}
	return s.scanRuns(runs)
}

// UpdateRun implements [storage.MetadataStore]: the check that the run is
// the scope's with the same submission and task, and the update, are one
// transaction.
func (s *Store) UpdateRun(ctx context.Context, sc auth.Scope, r storage.Run) error {
	if err := s.beginScoped(ctx, "UpdateRun", sc); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	args, err := RunArgs(r)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	org := string(sc.Org())
	lookup := Stmt{SQL: sqlRunKeys, Args: []string{string(r.ID), org}}
	var res Result
	if r.Org != sc.Org() {
		// Nothing to write: only whether the run exists decides the error.
		res, err = s.exec(ctx, "UpdateRun", false, lookup)
	} else {
		// args: id, submission, org, task, state, created, started, finished, result
		update := []string{args[4], args[5], args[6], args[7], args[8], string(r.ID), org, string(r.Submission), string(r.Task)}
		res, err = s.exec(ctx, "UpdateRun", true, lookup, Stmt{SQL: sqlUpdateRun, Args: update})
	}
	if err != nil {
		return err
	}
	keys := res.rows(0)
	if len(keys) == 0 {
		return s.notFound("run", r.ID)
	}
	if r.Org != sc.Org() || keys[0].str(0) != string(r.Submission) || keys[0].str(1) != string(r.Task) {
		return fmt.Errorf("%s: run %q: UpdateRun may not change Org, Submission or Task; pass the run as GetRun returned it: %w", s.name, r.ID, storage.ErrInvalid)
	}
	return nil
}

// RunsInState implements [storage.MetadataStore].
func (s *Store) RunsInState(ctx context.Context, st storage.RunState, p storage.Page) ([]storage.Run, error) {
	if err := s.begin(ctx, "RunsInState"); err != nil {
		return nil, err
	}
	if !st.Valid() {
		return nil, fmt.Errorf("%s: unknown run state %q: %w", s.name, st, storage.ErrInvalid)
	}
	res, err := s.exec(ctx, "RunsInState", false, Stmt{SQL: sqlRunsInState, Args: []string{string(st), p.After, strconv.Itoa(p.N())}})
	if err != nil {
		return nil, err
	}
	return s.scanRuns(res.rows(0))
}

// PublicRun implements [storage.MetadataStore].
func (s *Store) PublicRun(ctx context.Context, id storage.RunID) (storage.Run, error) {
	if err := s.begin(ctx, "PublicRun"); err != nil {
		return storage.Run{}, err
	}
	if err := s.checkID("run", string(id)); err != nil {
		return storage.Run{}, err
	}
	res, err := s.exec(ctx, "PublicRun", false, Stmt{SQL: sqlPublicRun, Args: []string{string(id)}})
	if err != nil {
		return storage.Run{}, err
	}
	return s.oneRun(res.rows(0), "public run", id)
}

// Audit.

// AppendAudit implements [storage.MetadataStore].
func (s *Store) AppendAudit(ctx context.Context, r storage.AuditRecord) error {
	if err := s.begin(ctx, "AppendAudit"); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	writeID := newWriteID()
	args, err := auditArgs(r, writeID)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	res, err := s.exec(ctx, "AppendAudit", true, Stmt{SQL: sqlAppendAudit, Args: args})
	if !isUnique(err) {
		return err
	}
	if res.Replayed && s.wroteID(ctx, sqlAuditWriteID, r.ID, writeID) {
		return nil
	}
	return fmt.Errorf("%s: audit record %q: records cannot be replaced: %w", s.name, r.ID, storage.ErrAlreadyExists)
}

// ListAudit implements [storage.MetadataStore]. It pages by record id:
// After names the last record of the previous page, and an After that names
// no record of the org yields an empty page.
func (s *Store) ListAudit(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.AuditRecord, error) {
	if err := s.beginScoped(ctx, "ListAudit", sc); err != nil {
		return nil, err
	}
	org, limit := string(sc.Org()), strconv.Itoa(p.N())
	st := Stmt{SQL: sqlListAuditFirst, Args: []string{org, limit}}
	if p.After != "" {
		st = Stmt{SQL: sqlListAuditAfter, Args: []string{org, p.After, org, p.After, org, limit}}
	}
	res, err := s.exec(ctx, "ListAudit", false, st)
	if err != nil {
		return nil, err
	}
	out := make([]storage.AuditRecord, 0, len(res.rows(0)))
	for _, row := range res.rows(0) {
		r, err := scanAudit(row)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}
