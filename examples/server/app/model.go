package app

import (
	"time"

	"github.com/compatool/compatool/storage"
)

// Submission is the JSON of a submission.
type Submission struct {
	ID        string    `json:"id"`
	AgentName string    `json:"agent_name"`
	Image     string    `json:"image"`
	Tasks     []string  `json:"tasks"`
	Public    bool      `json:"public"`
	Owner     string    `json:"owner"`
	CreatedAt time.Time `json:"created_at"`
}

func submissionOut(s storage.Submission) Submission {
	out := Submission{ID: string(s.ID), AgentName: s.AgentName, Image: s.Image, Public: s.Public, Owner: s.Owner, CreatedAt: s.CreatedAt, Tasks: []string{}}
	for _, t := range s.Tasks {
		out.Tasks = append(out.Tasks, string(t))
	}
	return out
}

// Run is the JSON of a run and, once it ended, its result.
type Run struct {
	ID         string     `json:"id"`
	Submission string     `json:"submission_id"`
	Task       string     `json:"task_id"`
	State      string     `json:"state"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Result     *Result    `json:"result,omitempty"`
}

// Result is the JSON of a run's result.
type Result struct {
	Passed bool    `json:"passed"`
	Score  float64 `json:"score"`
	Detail string  `json:"detail,omitempty"`
	// Failure is "agent" or "infrastructure" for a failed run.
	Failure     string  `json:"failure,omitempty"`
	ExitCode    int     `json:"exit_code"`
	TimedOut    bool    `json:"timed_out,omitempty"`
	ExitReason  string  `json:"exit_reason,omitempty"`
	ToolCalls   int     `json:"tool_calls"`
	AgentTimeMS float64 `json:"agent_time_ms"`
}

func runOut(r storage.Run) Run {
	out := Run{ID: string(r.ID), Submission: string(r.Submission), Task: string(r.Task), State: string(r.State), CreatedAt: r.CreatedAt,
		StartedAt: timePtr(r.StartedAt), FinishedAt: timePtr(r.FinishedAt)}
	if res := r.Result; res != nil {
		out.Result = &Result{
			Passed: res.Passed, Score: res.Score, Detail: res.Detail, Failure: string(res.Failure),
			ExitCode: res.Exit.Code, TimedOut: res.Exit.TimedOut, ExitReason: res.Exit.Reason,
			ToolCalls: res.ToolCalls, AgentTimeMS: float64(res.AgentTime.Microseconds()) / 1000,
		}
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// AuditRecord is the JSON of one staff access to an organisation's data.
type AuditRecord struct {
	ID        string    `json:"id"`
	At        time.Time `json:"at"`
	Staff     string    `json:"staff"`
	Org       string    `json:"org"`
	Operation string    `json:"operation"`
	Reason    string    `json:"reason"`
	Action    string    `json:"action"`
	Target    string    `json:"target,omitempty"`
}

func auditOut(r storage.AuditRecord) AuditRecord {
	return AuditRecord{ID: r.ID, At: r.At, Staff: r.Staff, Org: string(r.Org), Operation: string(r.Operation), Reason: r.Reason, Action: r.Action, Target: r.Target}
}

// List is the JSON of one page of a listing. Next, when set, is the
// "after" query parameter of the next page.
type List[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next,omitempty"`
}
