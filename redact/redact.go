// Package redact turns a run's transcript into the only form a transcript
// store accepts, a [storage.RedactedTranscript]. It keeps promise P8 of
// DESIGN.md: a stored transcript carries [storage.Redacted] for the goal, tool
// calls and their arguments are kept in full, and the goal is never written
// to any store, because redaction happens before the first persisted byte.
//
// Beyond the page, the goal text and the run's secrets (the MCP token,
// injected credentials, upstream credentials) are also replaced wherever they
// appear verbatim in the transcript: agent logs, lifecycle details, tool-call
// names, arguments, results and error texts, and the exit reason. An agent
// that echoes its goal or prints its token therefore leaks neither.
//
// # What is searched
//
// A pattern is matched against the text a reader of the stored JSON decodes,
// not against its encoding: inside tool-call arguments and results (raw JSON)
// every string token, object keys included, is decoded when it has escapes
// ("\u0041", "\/", "\"", escaped non-ASCII and surrogate pairs), so an escaped
// copy of the goal is found too. Only a string with a match is rewritten; all
// else in a raw value, including key order, numbers, whitespace and every
// untouched string, is copied byte for byte. Invalid UTF-8 is searched as
// the U+FFFD a JSON decoder makes of it.
//
// Matching is exact and case-sensitive. Empty patterns are ignored. Where
// occurrences of several patterns overlap or nest, the whole region they
// cover becomes one [storage.Redacted], so no part of any pattern is left.
// The output can then contain a pattern only where it overlaps a
// [storage.Redacted] marker: a pattern that is part of the marker itself
// ("RED"), or one that begins with the marker's end or ends with its
// beginning ("]x", "x[RE").
//
// Ids (run, submission, org, task) are random and are not searched, nor are
// the schema, event kinds and the failure class, which are fixed words.
//
// # Speed
//
// One [Matcher] is compiled per call and shared by every field, and a large
// transcript is encoded in parts on several cores, so redaction runs at
// gigabytes per second (see BenchmarkRedact) and adds little to a run.
//
// # Malformed tool calls
//
// Tool-call arguments or a result that is not one valid JSON value does not
// fail the run: the raw bytes are treated as text, redacted, and stored as a
// JSON string in place of the value.
//
// # Errors
//
// [Redactor.Redact] refuses, with an error wrapping [storage.ErrInvalid], a
// nil transcript, one without a run or organisation id, one whose Schema is
// neither empty nor [storage.TranscriptSchema], and one whose timestamps
// cannot be written as RFC 3339.
package redact

import (
	"cmp"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/compatool/compatool/internal/redacted"
	"github.com/compatool/compatool/storage"
)

// Sensitive is what must never reach a store: the goal text and the run's
// secrets (the MCP token, injected credentials, upstream credentials).
type Sensitive struct {
	Goal    string
	Secrets []string
}

// Redactor turns a transcript into the only form a transcript store accepts.
// Implementations must be safe for concurrent use.
type Redactor interface {
	// Redact returns t encoded as JSON with Goal set to [storage.Redacted]
	// and every verbatim occurrence of s.Goal and of each secret replaced by
	// [storage.Redacted] wherever it appears: log data, lifecycle details,
	// tool-call names, arguments, results and error texts, and the exit
	// reason. It must not modify *t. Tool-call arguments and results stay
	// valid JSON and are otherwise kept in full.
	Redact(t *storage.Transcript, s Sensitive) (storage.RedactedTranscript, error)
	// String returns text with every occurrence of the goal and the secrets
	// replaced by [storage.Redacted].
	String(text string, s Sensitive) string
}

// Default is the package's redactor. It compiles one [Matcher] per call; to
// redact many texts for the same run, [Compile] once and use the Matcher.
var Default Redactor = redactor{}

type redactor struct{}

func (redactor) String(text string, s Sensitive) string {
	return Compile(s).ReplaceString(text)
}

func (redactor) Redact(t *storage.Transcript, s Sensitive) (storage.RedactedTranscript, error) {
	if t == nil {
		return storage.RedactedTranscript{}, fmt.Errorf("redact: nil transcript: %w", storage.ErrInvalid)
	}
	if t.Run == "" {
		return storage.RedactedTranscript{}, fmt.Errorf("redact: transcript has no run id; set Transcript.Run: %w", storage.ErrInvalid)
	}
	if t.Org == "" {
		return storage.RedactedTranscript{}, fmt.Errorf("redact: transcript of run %q has no organisation; set Transcript.Org: %w", t.Run, storage.ErrInvalid)
	}
	if t.Schema != "" && t.Schema != storage.TranscriptSchema {
		return storage.RedactedTranscript{}, fmt.Errorf("redact: transcript of run %q has schema %q; this version writes only %q: %w",
			t.Run, t.Schema, storage.TranscriptSchema, storage.ErrInvalid)
	}
	e := encoder{buf: make([]byte, 0, estimate(t)), raw: rawRedactor{m: Compile(s)}}
	if err := e.transcript(t); err != nil {
		return storage.RedactedTranscript{}, fmt.Errorf("redact: transcript of run %q: %w: %w", t.Run, err, storage.ErrInvalid)
	}
	return redacted.Make(e.buf, string(t.Run), t.Org, string(t.Submission)), nil
}

// estimate is about the encoded size of t, so the output grows at most once
// or twice.
func estimate(t *storage.Transcript) int {
	n := 512 + len(t.Exit.Reason)
	for i := range t.Events {
		n += eventSize(&t.Events[i])
	}
	return n
}

func eventSize(ev *storage.Event) int {
	n := 96
	if c := ev.ToolCall; c != nil {
		n += 96 + len(c.Name) + len(c.Arguments) + len(c.Result) + len(c.Error)
	}
	if l := ev.Log; l != nil {
		n += 48 + len(l.Stream) + len(l.Data) + len(l.Data)/16
	}
	if l := ev.Lifecycle; l != nil {
		n += 32 + len(l.Phase) + len(l.Detail)
	}
	return n
}

// parallelBytes is how many estimated bytes of events make it worth one more
// goroutine: a large transcript is encoded in parts, one per core at most,
// which are then joined in order.
const parallelBytes = 1 << 20

// events writes evs, each followed by a comma, in parts when they are large.
func (e *encoder) events(evs []storage.Event, size int) error {
	return e.parts(evs, size, min(runtime.GOMAXPROCS(0), size/parallelBytes))
}

// parts writes evs in about as many parts, each in its own goroutine.
func (e *encoder) parts(evs []storage.Event, size, parts int) error {
	if parts <= 1 {
		return e.run(evs, 0)
	}
	// Split where the running size passes each part's share.
	bounds, sizes := []int{0}, []int{0}
	for i, acc := 0, 0; i < len(evs); i++ {
		acc += eventSize(&evs[i])
		sizes[len(sizes)-1] += eventSize(&evs[i])
		if acc >= size/parts*len(bounds) && len(bounds) < parts {
			bounds, sizes = append(bounds, i+1), append(sizes, 0)
		}
	}
	bounds = append(bounds, len(evs))
	rest := make([]encoder, len(bounds)-2)
	errs := make([]error, len(bounds)-1)
	panics := make([]any, len(rest))
	var wg sync.WaitGroup
	for k := range rest {
		wg.Go(func() {
			// A panic belongs to the caller's goroutine, not the process.
			defer func() { panics[k] = recover() }()
			rest[k] = encoder{buf: make([]byte, 0, sizes[k+1]), raw: rawRedactor{m: e.raw.m}}
			errs[k+1] = rest[k].run(evs[bounds[k+1]:bounds[k+2]], bounds[k+1])
		})
	}
	errs[0] = e.run(evs[:bounds[1]], 0)
	wg.Wait()
	for k := range rest {
		if panics[k] != nil {
			panic(panics[k])
		}
		e.buf = append(e.buf, rest[k].buf...)
	}
	return cmp.Or(errs...)
}

// run writes evs, each followed by a comma; the error is the first event's
// that cannot be written. evs[0] is event number first.
func (e *encoder) run(evs []storage.Event, first int) error {
	var err error
	for i := range evs {
		if err1 := e.event(&evs[i]); err1 != nil && err == nil {
			err = fmt.Errorf("event %d: %w", first+i, err1)
		}
	}
	return err
}

// encoder writes a storage.Transcript as encoding/json would (same field
// names, order and omissions; tests hold it to that), redacting every free
// text on the way. It is hand-written because the redaction target is above
// the speed of encoding/json alone.
type encoder struct {
	buf []byte
	raw rawRedactor
}

func (e *encoder) key(k string) { e.buf = append(append(append(e.buf, '"'), k...), '"', ':') }

// unsearched matches nothing.
var unsearched = new(Matcher)

// id writes a value that is not searched.
func (e *encoder) id(k, v string) {
	e.key(k)
	e.buf = append(appendString(e.buf, unsearched, v), ',')
}

// text writes a redacted string.
func (e *encoder) text(k, v string) {
	e.key(k)
	e.buf = append(appendString(e.buf, e.raw.m, v), ',')
}

// json writes a raw JSON value with its strings redacted; nil is null.
func (e *encoder) json(k string, v []byte) {
	e.key(k)
	if len(v) == 0 {
		e.buf = append(e.buf, "null,"...)
		return
	}
	e.buf = append(e.raw.appendRaw(e.buf, v), ',')
}

func (e *encoder) bool(k string, v bool) {
	e.key(k)
	e.buf = append(strconv.AppendBool(e.buf, v), ',')
}

func (e *encoder) int(k string, v int64) {
	e.key(k)
	e.buf = append(strconv.AppendInt(e.buf, v, 10), ',')
}

func (e *encoder) time(k string, v time.Time) error {
	e.key(k)
	b, err := v.AppendText(append(e.buf, '"'))
	if err != nil {
		return fmt.Errorf("%s: %w", k, err)
	}
	e.buf = append(b, '"', ',')
	return nil
}

// open starts an object; close ends it, dropping the trailing comma.
func (e *encoder) open(k string) {
	if k != "" {
		e.key(k)
	}
	e.buf = append(e.buf, '{')
}

func (e *encoder) close() {
	if e.buf[len(e.buf)-1] == ',' {
		e.buf = e.buf[:len(e.buf)-1]
	}
	e.buf = append(e.buf, '}', ',')
}

func (e *encoder) transcript(t *storage.Transcript) error {
	e.open("")
	e.id("schema", storage.TranscriptSchema)
	e.id("run_id", string(t.Run))
	e.id("submission_id", string(t.Submission))
	e.id("org_id", t.Org)
	e.id("task_id", string(t.Task))
	e.id("goal", storage.Redacted)
	err := cmp.Or(e.time("started_at", t.StartedAt), e.time("finished_at", t.FinishedAt))
	e.open("exit")
	e.int("code", int64(t.Exit.Code))
	e.bool("timed_out", t.Exit.TimedOut)
	e.text("reason", t.Exit.Reason)
	e.close()
	if t.Failure != "" {
		e.id("failure", string(t.Failure))
	}
	e.key("events")
	if t.Events == nil {
		e.buf = append(e.buf, "null"...)
	} else {
		e.buf = append(e.buf, '[')
		err = cmp.Or(err, e.events(t.Events, cap(e.buf)))
		if e.buf[len(e.buf)-1] == ',' {
			e.buf = e.buf[:len(e.buf)-1]
		}
		e.buf = append(e.buf, ']')
	}
	e.close()
	e.buf = e.buf[:len(e.buf)-1]
	return err
}

func (e *encoder) event(ev *storage.Event) error {
	e.buf = append(e.buf, '{')
	e.int("seq", int64(ev.Seq))
	err := e.time("at", ev.At)
	e.id("kind", string(ev.Kind))
	if c := ev.ToolCall; c != nil {
		e.open("tool_call")
		e.text("name", c.Name)
		e.json("arguments", c.Arguments)
		if len(c.Result) > 0 {
			e.json("result", c.Result)
		}
		e.bool("is_error", c.IsError)
		if c.Error != "" {
			e.text("error", c.Error)
		}
		e.int("duration_ns", int64(c.Duration))
		e.close()
	}
	if l := ev.Log; l != nil {
		e.open("log")
		e.text("stream", l.Stream)
		e.text("data", l.Data)
		if l.Truncated {
			e.bool("truncated", true)
		}
		e.close()
	}
	if l := ev.Lifecycle; l != nil {
		e.open("lifecycle")
		e.text("phase", l.Phase)
		if l.Detail != "" {
			e.text("detail", l.Detail)
		}
		e.close()
	}
	e.close()
	return err
}
