// Package d1store is a [storage.MetadataStore] on Cloudflare D1, through the
// D1 query API of github.com/cloudflare/cloudflare-go/v6.
//
// It runs the same schema migrations and the very same statements as
// sqlitestore (both come from one shared package), so it keeps the storage
// promises of DESIGN.md (P4, P6, P9, P11, P12) the same way: every tenant
// statement names the scope's organisation, a submission and its runs are
// created and erased in one transaction, the audit table refuses UPDATE and
// DELETE, and with [Options.Keyring] the submission metadata no query needs
// (owner, agent name, image, tasks, creation time) is sealed before it
// leaves the process.
//
// # Round trips
//
// Each method is one HTTP request: the statements of a call travel as one D1
// batch, which D1 runs as one transaction. A run's lifecycle —
// CreateSubmission, UpdateRun to running, UpdateRun to finished, GetRun —
// is four requests.
//
// # Retries
//
// A request that meets 429, a 5xx, a timeout of [Options.AttemptTimeout] or
// a broken connection is sent again, up to [Options.MaxAttempts] times, after
// an exponential backoff with jitter (a 429's Retry-After is honoured up to
// [Options.MaxRetryDelay]). Any other answer (a 4xx such as a SQL error or a
// bad token) is final.
//
// After a 5xx, a timeout or a broken connection the request may have been
// applied; replaying it is safe for every statement this package sends:
//
//   - reads change nothing;
//   - PutTask is an upsert, and SetPublic and UpdateRun set every column to
//     the caller's values, so a replay writes the same row;
//   - CreateSubmission and AppendAudit store a random write id of the call
//     with the row; when a replay meets a taken id, the store reads the
//     row's write id and reports success if it is the call's own, so an
//     applied-then-lost create is neither duplicated nor reported as a
//     conflict;
//   - DeleteSubmission reports success when a replay finds the submission
//     gone, since the lost attempt may have erased it;
//   - applying a migration is checked against schema_migrations when a
//     replay fails.
//
// A 429 is refused before anything runs, so it is retried like a read.
//
// # Erasure
//
// DeleteSubmission deletes the submission and its runs with SQL DELETE in
// one batch, and that is all this package can do: D1 manages its own
// storage and refuses the PRAGMAs that would scrub it (secure_delete,
// wal_checkpoint), so the SQL delete is the erasure. What remains of deleted rows in D1's pages, logs and replicas
// is Cloudflare's to remove, and D1's Time Travel can restore the database
// to any minute of the last 30 days, erased rows included; sqlitestore,
// which owns its file, scrubs it instead.
//
// # Errors
//
// Errors wrap the sentinels of package storage; test with errors.Is.
package d1store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/cloudflare-go/v6/d1"
	"github.com/cloudflare/cloudflare-go/v6/option"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/internal/sqlmeta"
)

// ErrSchemaTooNew reports a database migrated by a newer version of this
// package. The database is left as it is.
var ErrSchemaTooNew = sqlmeta.ErrSchemaTooNew

// Defaults of [Options].
const (
	DefaultBaseURL        = "https://api.cloudflare.com/client/v4/"
	DefaultMaxAttempts    = 5
	DefaultAttemptTimeout = 30 * time.Second
	DefaultRetryDelay     = 200 * time.Millisecond
	DefaultMaxRetryDelay  = 5 * time.Second
)

// Options configures a [Store]. The zero value talks to Cloudflare's API.
type Options struct {
	// BaseURL is the Cloudflare API's base URL; "" means DefaultBaseURL.
	// Tests point it at an emulator ("http://127.0.0.1:port/client/v4/").
	BaseURL string
	// HTTPClient sends the requests; nil means a client of the store's own
	// on Go's default transport.
	HTTPClient *http.Client
	// Keyring, when set, seals each submission's metadata (owner, agent
	// name, image, tasks, creation time).
	Keyring *envelope.Keyring
	// Now stamps the schema migrations applied; nil means time.Now.
	Now func() time.Time
	// Logger receives a line per retry and per applied migration; nil
	// discards.
	Logger *slog.Logger
	// MaxAttempts bounds the attempts of one request; 0 means
	// DefaultMaxAttempts.
	MaxAttempts int
	// AttemptTimeout bounds one attempt; 0 means DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// RetryDelay is the backoff before the second attempt, doubling after
	// each; 0 means DefaultRetryDelay. MaxRetryDelay caps it (and a 429's
	// Retry-After); 0 means DefaultMaxRetryDelay.
	RetryDelay, MaxRetryDelay time.Duration
}

// Store is a metadata store in one D1 database. It is safe for concurrent
// use.
type Store struct {
	meta *sqlmeta.Store
	x    *executor
}

var _ storage.MetadataStore = (*Store)(nil)

// Open returns a store on the D1 database databaseID of the Cloudflare
// account accountID, authenticated with apiToken (which needs D1 edit
// permission), and migrates the database to the current schema.
func Open(ctx context.Context, accountID, databaseID, apiToken string, opts *Options) (*Store, error) {
	if accountID == "" || databaseID == "" || apiToken == "" {
		return nil, errors.New("d1store: the account id, database id and API token are required; find them in the Cloudflare dashboard under D1")
	}
	if opts == nil {
		opts = &Options{}
	}
	o := *opts
	if o.BaseURL == "" {
		o.BaseURL = DefaultBaseURL
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = DefaultAttemptTimeout
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.MaxRetryDelay <= 0 {
		o.MaxRetryDelay = DefaultMaxRetryDelay
	}
	x := &executor{
		// The SDK's own retries are off: which requests may be replayed is
		// decided here, with the statements in view.
		db: d1.NewDatabaseService(
			option.WithBaseURL(o.BaseURL),
			option.WithAPIToken(apiToken),
			option.WithHTTPClient(o.HTTPClient),
			option.WithMaxRetries(0),
		),
		account:  accountID,
		database: databaseID,
		opts:     o,
	}
	s := &Store{x: x, meta: sqlmeta.New(x, sqlmeta.Config{Name: "d1store", Keyring: o.Keyring, Now: o.Now, Logger: o.Logger})}
	if err := s.meta.Migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Close is for symmetry with the other stores: the store holds nothing but
// the HTTP client, which is the caller's.
func (s *Store) Close() error { return nil }

// executor sends sqlmeta's statements to D1 as one request each call.
type executor struct {
	db                *d1.DatabaseService
	account, database string
	opts              Options
}

// attemptError is the outcome of one failed attempt.
type attemptError struct {
	err        error
	retry      bool          // another attempt may succeed
	ambiguous  bool          // the attempt may have been applied
	retryAfter time.Duration // the server's Retry-After, if any
}

func (x *executor) Exec(ctx context.Context, write bool, stmts ...sqlmeta.Stmt) (sqlmeta.Result, error) {
	var res sqlmeta.Result
	for attempt := 1; ; attempt++ {
		rows, ae := x.attempt(ctx, stmts)
		if ae == nil {
			res.Rows = rows
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("D1 query: %w", err)
		}
		if !ae.retry || attempt >= x.opts.MaxAttempts {
			if ae.retry {
				return res, fmt.Errorf("D1 query failed %d times, last: %w", attempt, ae.err)
			}
			return res, ae.err
		}
		if ae.ambiguous && write {
			res.Replayed = true
		}
		delay := x.backoff(attempt, ae.retryAfter)
		x.opts.Logger.WarnContext(ctx, "d1store: retrying D1 request", "attempt", attempt, "delay", delay, "err", ae.err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("D1 query: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// backoff is an exponential delay with jitter in [d/2, d).
func (x *executor) backoff(attempt int, retryAfter time.Duration) time.Duration {
	d := x.opts.RetryDelay << min(attempt-1, 20)
	d = min(max(d, retryAfter), x.opts.MaxRetryDelay)
	return d/2 + rand.N(d/2+1)
}

func (x *executor) attempt(ctx context.Context, stmts []sqlmeta.Stmt) ([][]sqlmeta.Row, *attemptError) {
	actx, cancel := context.WithTimeout(ctx, x.opts.AttemptTimeout)
	defer cancel()
	var params d1.DatabaseRawParams
	params.AccountID.Value, params.AccountID.Present = x.account, true
	if len(stmts) == 1 {
		var q d1.DatabaseRawParamsBodyD1SingleQuery
		q.Sql.Value, q.Sql.Present = stmts[0].SQL, true
		q.Params.Value, q.Params.Present = nonNil(stmts[0].Args), true
		params.Body = q
	} else {
		batch := make([]d1.DatabaseRawParamsBodyMultipleQueriesBatch, len(stmts))
		for i, st := range stmts {
			batch[i].Sql.Value, batch[i].Sql.Present = st.SQL, true
			batch[i].Params.Value, batch[i].Params.Present = nonNil(st.Args), true
		}
		var q d1.DatabaseRawParamsBodyMultipleQueries
		q.Batch.Value, q.Batch.Present = batch, true
		params.Body = q
	}
	var resp *http.Response
	page, err := x.db.Raw(actx, x.database, params, option.WithResponseInto(&resp))
	if err != nil {
		return nil, classify(ctx, actx, resp, err)
	}
	out := make([][]sqlmeta.Row, len(page.Result))
	for i, r := range page.Result {
		if !r.Success {
			return nil, &attemptError{err: fmt.Errorf("D1 reported statement %d as failed", i)}
		}
		out[i] = make([]sqlmeta.Row, len(r.Results.Rows))
		for j, row := range r.Results.Rows {
			out[i][j] = sqlmeta.Row(row)
		}
	}
	return out, nil
}

// nonNil sends [] rather than null for a statement without parameters.
func nonNil(args []string) []string {
	if args == nil {
		return []string{}
	}
	return args
}

// classify decides whether a failed attempt is worth another and whether
// it may have been applied.
func classify(ctx, actx context.Context, resp *http.Response, err error) *attemptError {
	if resp != nil && resp.StatusCode >= 400 {
		ae := &attemptError{err: fmt.Errorf("D1 answered %s: %s", resp.Status, apiMessage(resp))}
		switch {
		case resp.StatusCode == http.StatusTooManyRequests:
			ae.retry = true
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
				ae.retryAfter = time.Duration(s) * time.Second
			}
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout:
			ae.retry, ae.ambiguous = true, true
		}
		return ae
	}
	if ctx.Err() != nil {
		return &attemptError{err: err}
	}
	if actx.Err() != nil {
		return &attemptError{err: fmt.Errorf("D1 request timed out: %w", err), retry: true, ambiguous: true}
	}
	// A refused connection never reached D1; anything else on the wire may
	// have.
	return &attemptError{err: fmt.Errorf("D1 request: %w", err), retry: true, ambiguous: !errors.Is(err, syscall.ECONNREFUSED)}
}

// apiMessage reads the messages of a Cloudflare error envelope.
func apiMessage(resp *http.Response) string {
	if resp.Body == nil {
		return "no body"
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var env struct {
		Errors []struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &env) != nil || len(env.Errors) == 0 {
		return strconv.Quote(string(b))
	}
	msg := ""
	for i, e := range env.Errors {
		if i > 0 {
			msg += "; "
		}
		msg += fmt.Sprintf("%s (code %d)", e.Message, e.Code)
	}
	return msg
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

// CreateSubmission stores a submission and its queued runs in one batch,
// which D1 runs as one transaction.
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
// batch.
func (s *Store) DeleteSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) error {
	return s.meta.DeleteSubmission(ctx, sc, id)
}

// GetRun returns a run of the scope's org.
func (s *Store) GetRun(ctx context.Context, sc auth.Scope, id storage.RunID) (storage.Run, error) {
	return s.meta.GetRun(ctx, sc, id)
}

// ListRuns lists the runs of one submission ordered by id.
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
