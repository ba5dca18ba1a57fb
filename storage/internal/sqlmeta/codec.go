package sqlmeta

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

// timeLayout is fixed-width (nine fractional digits, always UTC), so that
// comparing the text compares the instants.
const timeLayout = "2006-01-02T15:04:05.000000000Z"

// timeText encodes t; the zero time is "", which the statements store as NULL.
func timeText(t time.Time) (string, error) {
	if t.IsZero() {
		return "", nil
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return "", fmt.Errorf("%w: time %s is outside the years 0 to 9999 the SQL stores keep", storage.ErrInvalid, t)
	}
	return t.Format(timeLayout), nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(timeLayout, s)
}

func boolText(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func bytesText(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// Row is one result row. Values are nil, int64, float64, string or []byte
// (SQLite), or nil, float64, string or json.Number (D1's JSON); the
// accessors accept both.
type Row []any

func (r Row) str(i int) string {
	if i >= len(r) {
		return ""
	}
	switch v := r[i].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (r Row) int(i int) int64 {
	if i >= len(r) {
		return 0
	}
	switch v := r[i].(type) {
	case int64:
		return v
	case float64:
		return int64(v)
	case json.Number:
		n, _ := v.Int64()
		return n
	case string:
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

func (r Row) bool(i int) bool { return r.int(i) != 0 }

func (r Row) bytes(i int) ([]byte, error) {
	s := r.str(i)
	if s == "" {
		return nil, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

func (r Row) time(i int) (time.Time, error) { return parseTime(r.str(i)) }

// resultJSON is the stored form of a run's result. Its field names are part
// of the schema: change them only with a migration.
type resultJSON struct {
	Passed     bool    `json:"passed"`
	Score      float64 `json:"score"`
	Detail     string  `json:"detail,omitempty"`
	Failure    string  `json:"failure,omitempty"`
	ExitCode   int     `json:"exit_code"`
	TimedOut   bool    `json:"timed_out,omitempty"`
	ExitReason string  `json:"exit_reason,omitempty"`
	ToolCalls  int     `json:"tool_calls"`
	AgentTime  int64   `json:"agent_time_ns"`
}

func resultText(res *storage.Result) (string, error) {
	if res == nil {
		return "", nil
	}
	if math.IsNaN(res.Score) || math.IsInf(res.Score, 0) {
		return "", fmt.Errorf("%w: score %v is not a finite number", storage.ErrInvalid, res.Score)
	}
	b, err := json.Marshal(resultJSON{
		Passed: res.Passed, Score: res.Score, Detail: res.Detail, Failure: string(res.Failure),
		ExitCode: res.Exit.Code, TimedOut: res.Exit.TimedOut, ExitReason: res.Exit.Reason,
		ToolCalls: res.ToolCalls, AgentTime: int64(res.AgentTime),
	})
	return string(b), err
}

func parseResult(s string) (*storage.Result, error) {
	if s == "" {
		return nil, nil
	}
	var j resultJSON
	if err := json.Unmarshal([]byte(s), &j); err != nil {
		return nil, err
	}
	return &storage.Result{
		Passed: j.Passed, Score: j.Score, Detail: j.Detail, Failure: storage.Failure(j.Failure),
		Exit:      storage.Exit{Code: j.ExitCode, TimedOut: j.TimedOut, Reason: j.ExitReason},
		ToolCalls: j.ToolCalls, AgentTime: time.Duration(j.AgentTime),
	}, nil
}

// submissionMeta is the part of a submission no query looks at, kept as one
// JSON document and sealed when the store has a keyring. Its field names are
// part of the schema.
type submissionMeta struct {
	Owner     string           `json:"owner"`
	AgentName string           `json:"agent_name"`
	Image     string           `json:"image"`
	Tasks     []storage.TaskID `json:"tasks"`
	CreatedAt string           `json:"created_at,omitempty"`
}

// metaRecordID binds sealed metadata to its submission and organisation, so
// that sealed bytes copied onto another row do not open.
func metaRecordID(org auth.OrgID, id storage.SubmissionID) string {
	return "compatool.submission-meta/" + string(org) + "/" + string(id)
}

// RunArgs are the arguments of [SQLInsertRun] for r.
func RunArgs(r storage.Run) ([]string, error) {
	times := make([]string, 3)
	for i, t := range []time.Time{r.CreatedAt, r.StartedAt, r.FinishedAt} {
		var err error
		if times[i], err = timeText(t); err != nil {
			return nil, fmt.Errorf("run %q: %w", r.ID, err)
		}
	}
	res, err := resultText(r.Result)
	if err != nil {
		return nil, fmt.Errorf("run %q: %w", r.ID, err)
	}
	return []string{string(r.ID), string(r.Submission), string(r.Org), string(r.Task), string(r.State),
		times[0], times[1], times[2], res}, nil
}

// scanRun decodes a row of runColumns.
func scanRun(row Row) (storage.Run, error) {
	r := storage.Run{
		ID: storage.RunID(row.str(0)), Submission: storage.SubmissionID(row.str(1)),
		Org: auth.OrgID(row.str(2)), Task: storage.TaskID(row.str(3)), State: storage.RunState(row.str(4)),
	}
	var err error
	for i, t := range []*time.Time{&r.CreatedAt, &r.StartedAt, &r.FinishedAt} {
		if *t, err = row.time(5 + i); err != nil {
			return storage.Run{}, fmt.Errorf("run %q: stored time: %w", r.ID, err)
		}
	}
	if r.Result, err = parseResult(row.str(8)); err != nil {
		return storage.Run{}, fmt.Errorf("run %q: stored result: %w", r.ID, err)
	}
	return r, nil
}

func taskArgs(t storage.Task) ([]string, error) {
	retired, err := timeText(t.RetiredAt)
	if err != nil {
		return nil, fmt.Errorf("task %q: %w", t.ID, err)
	}
	created, err := timeText(t.CreatedAt)
	if err != nil {
		return nil, fmt.Errorf("task %q: %w", t.ID, err)
	}
	return []string{string(t.ID), t.Environment, t.Month, boolText(t.Private),
		bytesText(t.Sealed), bytesText(t.Published), retired, created}, nil
}

func scanTask(row Row) (storage.Task, error) {
	t := storage.Task{ID: storage.TaskID(row.str(0)), Environment: row.str(1), Month: row.str(2), Private: row.bool(3)}
	var err error
	if t.Sealed, err = row.bytes(4); err == nil {
		t.Published, err = row.bytes(5)
	}
	if err == nil {
		t.RetiredAt, err = row.time(6)
	}
	if err == nil {
		t.CreatedAt, err = row.time(7)
	}
	if err != nil {
		return storage.Task{}, fmt.Errorf("task %q: stored value: %w", t.ID, err)
	}
	return t, nil
}

func auditArgs(r storage.AuditRecord, writeID string) ([]string, error) {
	at, err := timeText(r.At)
	if err != nil {
		return nil, fmt.Errorf("audit record %q: %w", r.ID, err)
	}
	return []string{r.ID, string(r.Org), at, r.Staff, string(r.Operation), r.Reason, r.Action, r.Target, writeID}, nil
}

func scanAudit(row Row) (storage.AuditRecord, error) {
	at, err := row.time(2)
	if err != nil {
		return storage.AuditRecord{}, fmt.Errorf("audit record %q: stored time: %w", row.str(0), err)
	}
	return storage.AuditRecord{
		ID: row.str(0), Org: auth.OrgID(row.str(1)), At: at, Staff: row.str(3),
		Operation: auth.Operation(row.str(4)), Reason: row.str(5), Action: row.str(6), Target: row.str(7),
	}, nil
}
