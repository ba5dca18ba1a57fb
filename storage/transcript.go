package storage

import (
	"encoding/json"
	"time"
)

// TranscriptSchema is the value of [Transcript.Schema] this package writes.
const TranscriptSchema = "compatool.transcript/v1"

// Redacted is the text that replaces the goal and every secret.
const Redacted = "[REDACTED]"

// Transcript is the document kept for a run: what the agent did, in order.
// It is encoded as JSON. Before it is stored it passes a redactor, which sets
// Goal to [Redacted] and replaces the goal and the run's secrets wherever they
// appear; see package redact.
type Transcript struct {
	Schema     string       `json:"schema"`
	Run        RunID        `json:"run_id"`
	Submission SubmissionID `json:"submission_id"`
	Org        string       `json:"org_id"`
	Task       TaskID       `json:"task_id"`
	Goal       string       `json:"goal"`
	StartedAt  time.Time    `json:"started_at"`
	FinishedAt time.Time    `json:"finished_at"`
	Exit       Exit         `json:"exit"`
	Failure    Failure      `json:"failure,omitempty"`
	Events     []Event      `json:"events"`
}

// EventKind names what an [Event] records.
type EventKind string

const (
	EventToolCall  EventKind = "tool_call"
	EventLog       EventKind = "log"
	EventLifecycle EventKind = "lifecycle"
)

// Event is one entry of a transcript. Exactly one of ToolCall, Log and
// Lifecycle is set, as Kind says.
type Event struct {
	Seq       int        `json:"seq"`
	At        time.Time  `json:"at"`
	Kind      EventKind  `json:"kind"`
	ToolCall  *ToolCall  `json:"tool_call,omitempty"`
	Log       *Log       `json:"log,omitempty"`
	Lifecycle *Lifecycle `json:"lifecycle,omitempty"`
}

// ToolCall is one tools/call the agent made through the gateway, kept in
// full (P8).
type ToolCall struct {
	Name string `json:"name"`
	// Arguments are the call's arguments as the agent sent them.
	Arguments json.RawMessage `json:"arguments"`
	// Result is the tool's CallToolResult as JSON; absent when the call
	// failed at the protocol level (see Error).
	Result  json.RawMessage `json:"result,omitempty"`
	IsError bool            `json:"is_error"`
	// Error is a protocol-level error text.
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Log is output the agent wrote on one stream.
type Log struct {
	Stream    string `json:"stream"` // "stdout" or "stderr"
	Data      string `json:"data"`
	Truncated bool   `json:"truncated,omitempty"`
}

// Lifecycle is a step of the run: "sandbox_started", "sandbox_destroyed",
// "graded", and so on.
type Lifecycle struct {
	Phase  string `json:"phase"`
	Detail string `json:"detail,omitempty"`
}
