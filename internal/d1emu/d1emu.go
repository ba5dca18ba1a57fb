// Package d1emu emulates the Cloudflare D1 REST query API on a real SQLite
// database file, so that d1store (and the reference server, pointed at it)
// runs against SQLite's real behaviour behind D1's JSON shapes, with
// failures on demand. It is an [http.Handler]; tests serve it with
// net/http/httptest.
//
// It answers
//
//	POST /client/v4/accounts/{account}/d1/database/{database}/query
//	POST /client/v4/accounts/{account}/d1/database/{database}/raw
//
// with a body of one statement, {"sql": "...", "params": [...]}, or a batch,
// {"batch": [{"sql": ..., "params": [...]}, ...]}, as D1 does:
//
//   - the bearer token must be the configured one;
//   - params are strings, numbers, booleans (as 1 and 0) or null, nothing
//     else;
//   - a request is one transaction: every statement of it commits, or none
//     does;
//   - as on D1, transaction statements (BEGIN, COMMIT, SAVEPOINT, ...),
//     ATTACH and the PRAGMAs D1 does not allow are refused;
//   - foreign keys are enforced, as D1 always does;
//   - /query returns rows as objects, /raw as {"columns", "rows"} arrays,
//     each statement's result in the Cloudflare envelope
//     {"result": [...], "success": true, "errors": [], "messages": []};
//     a failure is {"success": false, "errors": [{"code": 7500, "message": ...}]}.
//
// An sql text holding several statements runs them all and answers with the
// rows of the last, one result for the text (D1 answers one result per
// statement).
//
// # Faults
//
// [Server.Inject] queues faults that the next requests meet, one each:
// [RateLimited] (429 before anything runs), [ServerError] (500 before
// anything runs), [Hang] (no answer until the client gives up or the server
// closes), and [ApplyThenFail] (the request commits, then the answer is a
// 500: the case a client cannot tell from a failure, for testing
// idempotency). [Server.Requests] counts requests, for measuring round
// trips.
package d1emu

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
)

// DefaultMaxBodyBytes bounds a request body when [Options.MaxBodyBytes] is
// zero.
const DefaultMaxBodyBytes = 16 << 20

// MaxStatements bounds the statements of one batch.
const MaxStatements = 10000

// Options configures a [Server]. AccountID, DatabaseID and Token are
// required.
type Options struct {
	AccountID  string
	DatabaseID string
	// Token is the API token clients must send as "Authorization: Bearer".
	Token string
	// MaxBodyBytes bounds a request body; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// OnFault, when set, is called on the request's goroutine as the
	// request meets an injected fault, before the fault acts: a test can
	// wait on it to know that a request hangs.
	OnFault func(Fault)
}

// Fault is a failure a request meets on demand.
type Fault int

const (
	// RateLimited answers 429 with a Retry-After of one second; nothing
	// runs.
	RateLimited Fault = iota + 1
	// ServerError answers 500; nothing runs.
	ServerError
	// Hang answers nothing until the client gives up or the server closes;
	// nothing runs.
	Hang
	// ApplyThenFail runs and commits the request, then answers 500.
	ApplyThenFail
)

// String names the fault as its constant does.
func (f Fault) String() string {
	switch f {
	case RateLimited:
		return "RateLimited"
	case ServerError:
		return "ServerError"
	case Hang:
		return "Hang"
	case ApplyThenFail:
		return "ApplyThenFail"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// Server is a D1 REST emulator over one SQLite database file. It is safe
// for concurrent use; requests run one at a time, as on D1.
type Server struct {
	opts    Options
	db      *sql.DB
	mu      sync.Mutex // serialises requests on conn
	conn    *sql.Conn
	guard   atomic.Bool // while set, the authorizer applies D1's rules
	closed  chan struct{}
	once    sync.Once
	mux     *http.ServeMux
	faultMu sync.Mutex
	faults  []Fault
	count   atomic.Int64
}

// New opens (creating if needed) the SQLite database at path and returns an
// emulator serving it. The caller closes the server.
func New(path string, opts Options) (*Server, error) {
	if opts.AccountID == "" || opts.DatabaseID == "" || opts.Token == "" {
		return nil, errors.New("d1emu: Options.AccountID, DatabaseID and Token are required")
	}
	if path == "" || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("d1emu: path %q: give the path of a database file, without '?'", path)
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	db, err := sql.Open("sqlite", path+"?_foreign_keys=1&_journal_mode=WAL&_busy_timeout=10000")
	if err != nil {
		return nil, fmt.Errorf("d1emu: opening %s: %w", path, err)
	}
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("d1emu: opening %s: %w", path, err)
	}
	s := &Server{opts: opts, db: db, conn: conn, closed: make(chan struct{})}
	err = conn.Raw(func(dc any) error {
		r, ok := dc.(sqlite.AuthorizerRegisterer)
		if !ok {
			return errors.New("the sqlite driver has no authorizer")
		}
		return r.RegisterAuthorizer(s.authorize)
	})
	if err != nil {
		conn.Close()
		db.Close()
		return nil, fmt.Errorf("d1emu: %w", err)
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /client/v4/accounts/{account}/d1/database/{database}/{op}", s.serveQuery)
	return s, nil
}

// Close releases hung requests and closes the database.
func (s *Server) Close() error {
	s.once.Do(func() { close(s.closed) })
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.conn.Close(), s.db.Close())
}

// Inject queues faults; each of the next requests meets one, in order.
func (s *Server) Inject(faults ...Fault) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.faults = append(s.faults, faults...)
}

// Requests returns how many query requests the server has received,
// answered or not.
func (s *Server) Requests() int64 { return s.count.Load() }

func (s *Server) nextFault() Fault {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if len(s.faults) == 0 {
		return 0
	}
	f := s.faults[0]
	s.faults = s.faults[1:]
	return f
}

// d1Pragmas are the PRAGMAs D1 allows.
var d1Pragmas = map[string]bool{
	"table_list": true, "table_info": true, "table_xinfo": true, "index_list": true, "index_info": true,
	"index_xinfo": true, "foreign_key_list": true, "foreign_key_check": true, "foreign_keys": true,
	"defer_foreign_keys": true, "quick_check": true, "optimize": true, "legacy_alter_table": true,
	"case_sensitive_like": true, "ignore_check_constraints": true, "recursive_triggers": true,
	"reverse_unordered_selects": true,
}

func (s *Server) authorize(action sqlite.AuthorizerActionCode, arg1, _, _, _ string) sqlite.AuthorizerReturnCode {
	if !s.guard.Load() {
		return sqlite.AuthorizerOK
	}
	switch action {
	case sqlite.AuthTransaction, sqlite.AuthSavepoint, sqlite.AuthAttach, sqlite.AuthDetach:
		return sqlite.AuthorizerDeny
	case sqlite.AuthPragma:
		if !d1Pragmas[strings.ToLower(arg1)] {
			return sqlite.AuthorizerDeny
		}
	}
	return sqlite.AuthorizerOK
}

// ServeHTTP implements [http.Handler].
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// apiError is one entry of the envelope's errors.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

type envelope struct {
	Result   any        `json:"result"`
	Success  bool       `json:"success"`
	Errors   []apiError `json:"errors"`
	Messages []any      `json:"messages"`
}

func writeJSON(w http.ResponseWriter, status int, v envelope) {
	if v.Errors == nil {
		v.Errors = []apiError{}
	}
	v.Messages = []any{}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, envelope{Errors: []apiError{{Code: code, Message: msg}}})
}

type statement struct {
	SQL    string `json:"sql"`
	Params []any  `json:"params"`
}

type request struct {
	statement
	Batch []statement `json:"batch"`
}

func (s *Server) serveQuery(w http.ResponseWriter, r *http.Request) {
	s.count.Add(1)
	op := r.PathValue("op")
	if op != "query" && op != "raw" {
		writeError(w, http.StatusNotFound, 7000, "No route for that URI")
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.opts.Token)) != 1 {
		writeError(w, http.StatusUnauthorized, 10000, "Authentication error")
		return
	}
	if r.PathValue("account") != s.opts.AccountID || r.PathValue("database") != s.opts.DatabaseID {
		writeError(w, http.StatusNotFound, 7404, "The database "+r.PathValue("database")+" could not be found")
		return
	}
	fault := s.nextFault()
	if fault != 0 && s.opts.OnFault != nil {
		s.opts.OnFault(fault)
	}
	switch fault {
	case RateLimited:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, 971, "Please wait and consider throttling your request speed")
		return
	case ServerError:
		writeError(w, http.StatusInternalServerError, 7500, "Internal error (injected)")
		return
	case Hang:
		select {
		case <-r.Context().Done():
		case <-s.closed:
		}
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes))
	dec.UseNumber()
	var req request
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, 7400, "Malformed JSON in request body: "+err.Error())
		return
	}
	stmts := req.Batch
	if stmts == nil {
		stmts = []statement{req.statement}
	}
	if len(stmts) == 0 || len(stmts) > MaxStatements {
		writeError(w, http.StatusBadRequest, 7400, fmt.Sprintf("a request needs 1 to %d statements", MaxStatements))
		return
	}
	// Like D1, a request runs to its end even if the client goes away.
	results, err := s.run(context.WithoutCancel(r.Context()), stmts, op == "raw")
	switch {
	case fault == ApplyThenFail:
		writeError(w, http.StatusInternalServerError, 7500, "Internal error (injected after the request was applied)")
	case err != nil:
		writeError(w, http.StatusBadRequest, 7500, err.Error())
	default:
		writeJSON(w, http.StatusOK, envelope{Result: results, Success: true})
	}
}

type meta struct {
	ChangedDB       bool    `json:"changed_db"`
	Changes         int64   `json:"changes"`
	Duration        float64 `json:"duration"`
	LastRowID       int64   `json:"last_row_id"`
	RowsRead        int64   `json:"rows_read"`
	RowsWritten     int64   `json:"rows_written"`
	ServedByPrimary bool    `json:"served_by_primary"`
}

type result struct {
	Results any  `json:"results"`
	Success bool `json:"success"`
	Meta    meta `json:"meta"`
}

type rawResults struct {
	Columns []string `json:"columns"`
	Rows    [][]any  `json:"rows"`
}

// run executes stmts as one transaction.
func (s *Server) run(ctx context.Context, stmts []statement, raw bool) (_ []result, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil, errors.New("the emulator is closed")
	default:
	}
	if _, err := s.conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return nil, err
	}
	defer func() {
		end := "COMMIT"
		if err != nil {
			end = "ROLLBACK"
		}
		if _, cerr := s.conn.ExecContext(ctx, end); cerr != nil && err == nil {
			err = cerr
		}
	}()
	out := make([]result, len(stmts))
	for i, st := range stmts {
		if out[i], err = s.exec(ctx, st, raw); err != nil {
			if len(stmts) > 1 {
				err = fmt.Errorf("batch statement %d: %w", i, err)
			}
			return nil, err
		}
	}
	return out, nil
}

func (s *Server) exec(ctx context.Context, st statement, raw bool) (result, error) {
	args, err := params(st.Params)
	if err != nil {
		return result{}, err
	}
	var before int64
	if err := s.conn.QueryRowContext(ctx, "SELECT total_changes()").Scan(&before); err != nil {
		return result{}, err
	}
	start := time.Now()
	cols, rows, err := s.query(ctx, st.SQL, args)
	if err != nil {
		return result{}, err
	}
	m := meta{Duration: float64(time.Since(start).Microseconds()) / 1000, ServedByPrimary: true}
	var after int64
	if err := s.conn.QueryRowContext(ctx, "SELECT total_changes(), last_insert_rowid()").Scan(&after, &m.LastRowID); err != nil {
		return result{}, err
	}
	m.Changes, m.ChangedDB, m.RowsRead = after-before, after != before, int64(len(rows))
	m.RowsWritten = m.Changes
	if raw {
		return result{Results: rawResults{Columns: cols, Rows: rows}, Success: true, Meta: m}, nil
	}
	objs := make([]map[string]any, len(rows))
	for i, row := range rows {
		objs[i] = make(map[string]any, len(cols))
		for j, c := range cols {
			objs[i][c] = row[j]
		}
	}
	return result{Results: objs, Success: true, Meta: m}, nil
}

// query runs user SQL under D1's rules.
func (s *Server) query(ctx context.Context, text string, args []any) ([]string, [][]any, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil, errors.New("no SQL statement given")
	}
	s.guard.Store(true)
	defer s.guard.Store(false)
	rows, err := s.conn.QueryContext(ctx, text, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, nil, err
	}
	out := [][]any{}
	for rows.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, nil, err
		}
		for i, v := range row {
			if b, ok := v.([]byte); ok {
				// D1 answers a BLOB as an array of byte values.
				a := make([]int, len(b))
				for j, c := range b {
					a[j] = int(c)
				}
				row[i] = a
			}
		}
		out = append(out, row)
	}
	return cols, out, rows.Err()
}

// params converts D1's JSON parameters to SQLite values.
func params(in []any) ([]any, error) {
	out := make([]any, len(in))
	for i, p := range in {
		switch v := p.(type) {
		case nil, string:
			out[i] = v
		case bool:
			out[i] = 0
			if v {
				out[i] = 1
			}
		case json.Number:
			if n, err := v.Int64(); err == nil {
				out[i] = n
			} else if f, err := v.Float64(); err == nil {
				out[i] = f
			} else {
				return nil, fmt.Errorf("parameter %d: number %s is out of range", i+1, v)
			}
		default:
			return nil, fmt.Errorf("parameter %d: type %T is not supported; D1 takes strings, numbers, booleans and null", i+1, p)
		}
	}
	return out, nil
}
