// Package sqlitestore is the embedded default [storage.MetadataStore]: one
// SQLite file on the local disk, with nothing to install (modernc.org/sqlite
// is SQLite compiled to pure Go, no cgo).
//
// It keeps the storage promises of DESIGN.md (P4, P6, P9, P11, P12) with the
// schema and statements it shares with d1store, so the embedded default and
// Cloudflare D1 hold the same data the same way:
//
//   - every tenant statement names the scope's organisation (P11);
//   - a submission, its runs and their results are created in one
//     transaction and erased in one transaction (P4);
//   - the audit table refuses UPDATE and DELETE with triggers (P12);
//   - private task content arrives sealed and is stored as given (P6), and
//     with [Options.Keyring] set the submission metadata no query needs
//     (owner, agent name, image, tasks, creation time) is sealed too, bound
//     to the submission's org and id.
//
// The database runs in WAL mode with foreign keys on, secure_delete on and a
// busy timeout, set on every connection rather than in the schema (D1, which
// shares the schema, refuses PRAGMAs). Writes go through one
// connection, so writers in this process queue instead of contending for
// SQLite's lock; reads use a pool of read-only connections and see
// committed data only. A process killed mid-write leaves every record whole
// or absent.
//
// # Erasure
//
// Erasure leaves no byte of the erased records in the database's files
// (P4). Deleting a row
// only unlinks it, and even with secure_delete, which zeroes deleted cells
// and freed pages, SQLite leaves stale copies of rows in the unused space of
// pages it rebalanced while they lived, and the write-ahead log keeps every
// page version written until it is checkpointed. So [Store.DeleteSubmission]
// deletes in one transaction, then calls [Store.Scrub]: VACUUM rebuilds the
// file from the live rows, and a TRUNCATE checkpoint copies the log into the
// file and cuts the log to zero bytes. Scrubbing rewrites the whole file, so
// its cost grows with it (about 3 s for 1,000,000 runs, 550 MB, on 2 cores),
// it needs free space for a temporary copy of the file (in the system's
// temporary directory) and for a log as large as the file, and writes of
// this store wait meanwhile; reads go on.
//
// A reader of another process that keeps a transaction open for longer
// than the busy timeout stops the log from being cut. DeleteSubmission then
// returns an error wrapping [ErrNotScrubbed] although the submission is
// deleted; call [Store.Scrub] again once that reader is done.
//
// # Schema
//
// [Open] applies the numbered migrations the file lacks, each once and in
// one transaction, and records them in the table schema_migrations. A file
// migrated by newer code is refused with [ErrSchemaTooNew].
//
// # Errors
//
// Errors wrap the sentinels of package storage; test with errors.Is.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/internal/sqlmeta"
)

// ErrSchemaTooNew reports a database file migrated by a newer version of
// this package. The file is left as it is.
var ErrSchemaTooNew = sqlmeta.ErrSchemaTooNew

// ErrNotScrubbed reports that erased records are deleted but their bytes may
// remain on disk, in the database file or its write-ahead log, because
// [Store.Scrub] could not finish; call Scrub again.
var ErrNotScrubbed = errors.New("sqlitestore: erased records are deleted but not yet scrubbed from disk")

// DefaultBusyTimeout is how long a write waits for another process's lock
// when [Options.BusyTimeout] is zero.
const DefaultBusyTimeout = 10 * time.Second

// Options configures a [Store]. The zero value is ready to use.
type Options struct {
	// Now stamps the schema migrations applied; nil means time.Now.
	Now func() time.Time
	// Logger receives a line per applied migration; nil discards.
	Logger *slog.Logger
	// Keyring, when set, seals each submission's metadata (owner, agent
	// name, image, tasks, creation time). A store that sealed metadata needs
	// the same keyring, or one holding its key, to read it back.
	Keyring *envelope.Keyring
	// BusyTimeout bounds the wait for a lock another process holds; 0
	// means DefaultBusyTimeout.
	BusyTimeout time.Duration
}

// Store is a metadata store in one SQLite file. It is safe for concurrent
// use, and several processes may open the same file.
type Store struct {
	meta   *sqlmeta.Store
	writer *sql.DB
	reader *sql.DB
}

var _ storage.MetadataStore = (*Store)(nil)

// Open opens the SQLite database at path, creating it if needed, and
// migrates it to the current schema. The caller closes the store.
func Open(ctx context.Context, path string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("sqlitestore: path %q: give the path of a database file, without \"file:\" or '?'", path)
	}
	busy := opts.BusyTimeout
	if busy <= 0 {
		busy = DefaultBusyTimeout
	}
	common := url.Values{
		"_busy_timeout": {strconv.FormatInt(busy.Milliseconds(), 10)},
		"_foreign_keys": {"1"},
		// Deleted cells and freed pages are zeroed, not only unlinked.
		"_pragma": {"secure_delete(1)"},
	}
	w := url.Values{"_journal_mode": {"WAL"}, "_txlock": {"immediate"},
		// FULL makes every commit durable, not only every checkpoint: a
		// run's state change is what a restarted host resumes from.
		"_synchronous": {"FULL"}}
	r := url.Values{"_query_only": {"1"}}
	for k, v := range common {
		w[k], r[k] = v, v
	}
	writer, err := sql.Open("sqlite", path+"?"+w.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: opening %s: %w", path, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetConnMaxIdleTime(0)
	// The writer connects first: it turns on WAL mode, which the read-only
	// connections could not.
	if err := writer.PingContext(ctx); err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlitestore: opening %s: %w", path, err)
	}
	reader, err := sql.Open("sqlite", path+"?"+r.Encode())
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlitestore: opening %s: %w", path, err)
	}
	reader.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	reader.SetMaxIdleConns(max(4, runtime.GOMAXPROCS(0)))
	s := &Store{writer: writer, reader: reader}
	s.meta = sqlmeta.New(executor{writer: writer, reader: reader}, sqlmeta.Config{
		Name: "sqlitestore", Keyring: opts.Keyring, Now: opts.Now, Logger: opts.Logger,
	})
	if err := s.meta.Migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database. Calls after Close fail.
func (s *Store) Close() error {
	// The writer closes last: the last connection checkpoints the WAL into
	// the database file.
	return errors.Join(s.reader.Close(), s.writer.Close())
}

// executor runs sqlmeta's statements on the two pools.
type executor struct {
	writer, reader *sql.DB
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (x executor) Exec(ctx context.Context, write bool, stmts ...sqlmeta.Stmt) (sqlmeta.Result, error) {
	db := x.reader
	if write {
		db = x.writer
	}
	if len(stmts) == 1 {
		rows, err := query(ctx, db, stmts[0])
		return sqlmeta.Result{Rows: [][]sqlmeta.Row{rows}}, err
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: !write})
	if err != nil {
		return sqlmeta.Result{}, err
	}
	defer tx.Rollback()
	res := sqlmeta.Result{Rows: make([][]sqlmeta.Row, len(stmts))}
	for i, st := range stmts {
		if res.Rows[i], err = query(ctx, tx, st); err != nil {
			return sqlmeta.Result{}, err
		}
	}
	return res, tx.Commit()
}

func query(ctx context.Context, q querier, st sqlmeta.Stmt) ([]sqlmeta.Row, error) {
	args := make([]any, len(st.Args))
	for i, a := range st.Args {
		args[i] = a
	}
	rows, err := q.QueryContext(ctx, st.SQL, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []sqlmeta.Row
	for rows.Next() {
		row := make(sqlmeta.Row, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// The methods below implement [storage.MetadataStore]; their contracts are
// its.

// PutTask creates or replaces a task.
func (s *Store) PutTask(ctx context.Context, t storage.Task) error { return s.meta.PutTask(ctx, t) }

// GetTask returns a task or storage.ErrNotFound.
func (s *Store) GetTask(ctx context.Context, id storage.TaskID) (storage.Task, error) {
	return s.meta.GetTask(ctx, id)
}

// ListTasks returns every task ordered by id.
func (s *Store) ListTasks(ctx context.Context) ([]storage.Task, error) { return s.meta.ListTasks(ctx) }

// CreateSubmission stores a submission and its queued runs in one
// transaction.
func (s *Store) CreateSubmission(ctx context.Context, sc auth.Scope, sub storage.Submission, runs []storage.Run) error {
	return s.meta.CreateSubmission(ctx, sc, sub, runs)
}

// GetSubmission returns a submission of the scope's org.
func (s *Store) GetSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) (storage.Submission, error) {
	return s.meta.GetSubmission(ctx, sc, id)
}

// ListSubmissions lists the scope's submissions ordered by id.
func (s *Store) ListSubmissions(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.Submission, error) {
	return s.meta.ListSubmissions(ctx, sc, p)
}

// SetPublic sets a submission's publication flag.
func (s *Store) SetPublic(ctx context.Context, sc auth.Scope, id storage.SubmissionID, public bool) error {
	return s.meta.SetPublic(ctx, sc, id, public)
}

// DeleteSubmission erases a submission with its runs and results in one
// transaction, then scrubs the file (see [Store.Scrub]). An error wrapping
// [ErrNotScrubbed] means the submission is deleted but the scrub did not
// finish.
func (s *Store) DeleteSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) error {
	if err := s.meta.DeleteSubmission(ctx, sc, id); err != nil {
		return err
	}
	if err := s.Scrub(ctx); err != nil {
		return fmt.Errorf("sqlitestore: submission %q is deleted, but its bytes may remain on disk: %w", id, err)
	}
	return nil
}

// Scrub removes from disk every byte of the records deleted so far: it
// rebuilds the database file from the live rows (VACUUM), then copies the
// write-ahead log into the file and truncates the log to zero bytes
// (PRAGMA wal_checkpoint(TRUNCATE)). It is safe to call at any time and to
// retry; every failure wraps [ErrNotScrubbed]. Writes of this store wait
// while it runs; its cost grows with the file (see Erasure in the package
// documentation).
func (s *Store) Scrub(ctx context.Context) error {
	if _, err := s.writer.ExecContext(ctx, "VACUUM"); err != nil {
		return fmt.Errorf("%w: rebuilding the database file: %w", ErrNotScrubbed, err)
	}
	// The checkpoint waits up to the busy timeout for readers still on an
	// older snapshot, whose pages the log must keep until they finish.
	var busy, logged, copied int
	if err := s.writer.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logged, &copied); err != nil {
		return fmt.Errorf("%w: checkpointing the write-ahead log: %w", ErrNotScrubbed, err)
	}
	if busy != 0 || logged != 0 {
		return fmt.Errorf("%w: a reader (of this or another process) held an older snapshot for longer than the busy timeout, so the write-ahead log still holds %d pages (%d copied into the file); call Scrub again once it is done",
			ErrNotScrubbed, logged, copied)
	}
	return nil
}

// GetRun returns a run of the scope's org.
func (s *Store) GetRun(ctx context.Context, sc auth.Scope, id storage.RunID) (storage.Run, error) {
	return s.meta.GetRun(ctx, sc, id)
}

// ListRuns lists the runs of one submission ordered by id, in one
// statement on the index of runs by submission.
func (s *Store) ListRuns(ctx context.Context, sc auth.Scope, sub storage.SubmissionID, p storage.Page) ([]storage.Run, error) {
	return s.meta.ListRuns(ctx, sc, sub, p)
}

// UpdateRun replaces the state, timestamps and result of a run.
func (s *Store) UpdateRun(ctx context.Context, sc auth.Scope, r storage.Run) error {
	return s.meta.UpdateRun(ctx, sc, r)
}

// RunsInState lists runs of every org in a state, for recovery.
func (s *Store) RunsInState(ctx context.Context, st storage.RunState, p storage.Page) ([]storage.Run, error) {
	return s.meta.RunsInState(ctx, st, p)
}

// PublicRun returns a run whose submission is public.
func (s *Store) PublicRun(ctx context.Context, id storage.RunID) (storage.Run, error) {
	return s.meta.PublicRun(ctx, id)
}

// AppendAudit appends an audit record.
func (s *Store) AppendAudit(ctx context.Context, r storage.AuditRecord) error {
	return s.meta.AppendAudit(ctx, r)
}

// ListAudit lists the audit records about the scope's org ordered by time,
// then id.
func (s *Store) ListAudit(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.AuditRecord, error) {
	return s.meta.ListAudit(ctx, sc, p)
}
