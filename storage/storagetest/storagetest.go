// Package storagetest is the conformance suite of package storage: every
// driver of [storage.MetadataStore] or [storage.TranscriptStore] runs
// [RunConformanceTests] unchanged and needs no other tests for the semantics
// it pins. The suite is how the drivers keep the storage promises of
// DESIGN.md (P4, P5, P6, P9, P11, P12) alike.
//
// Beyond the doc comments of package storage, the suite pins these choices,
// which every driver must make the same way:
//
//   - ids order by bytes ("B" < "a"), and Page.After need not name a record;
//     ListAudit is the exception: it pages by record id in (At, ID) order,
//     and an After that names no record of the scope's org gives an empty
//     page;
//   - times keep their instant to the nanosecond (not their location), and
//     order by instant: whole and fractional seconds, any time zone;
//   - a call with an invalid id ([storage.ValidID]) fails with
//     [storage.ErrInvalid]; so do RunsInState of an unknown state, a
//     submission without Owner or Image, a new run that is not queued or is
//     of a task the submission does not name, an audit record missing a
//     field, and a private task carrying Published plaintext before it is
//     retired;
//   - a run id repeated inside one CreateSubmission is [storage.ErrAlreadyExists];
//     so is an audit record id used before, in any org;
//   - an erased submission's ids may be used again;
//   - a tenant call on another organisation's id fails exactly as on a
//     missing id: same sentinel, same message but for the id;
//   - transcripts are keyed by organisation and run: a Put under one org's
//     scope never changes what another org reads; Archive and Restore keep
//     StoredAt; a Put over an archived transcript stores a live one;
//     StoredBefore is strictly before;
//   - a reader from Get yields the whole transcript it opened, or an error,
//     even if the transcript is replaced or deleted meanwhile;
//   - a call whose ctx is already cancelled returns an error wrapping
//     context.Canceled and changes nothing.
package storagetest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
)

// Harness gives the suite a fresh, empty driver instance. RunConformanceTests
// calls the constructor once per test and closes each harness when its test
// ends.
type Harness interface {
	// Metadata returns the metadata store under test, or nil if the driver
	// keeps only transcripts.
	Metadata() storage.MetadataStore
	// Transcripts returns the transcript store under test, or nil if the
	// driver keeps only metadata.
	Transcripts() storage.TranscriptStore
	// SetNow sets the clock the stores read for StoredAt (drivers take a
	// clock option). It is called before the first store call.
	SetNow(t time.Time)
	// Close releases the harness's resources.
	Close()
}

// RunConformanceTests runs the suite against the harnesses newHarness makes:
// the metadata tests if Metadata is not nil, the transcript tests if
// Transcripts is not nil.
func RunConformanceTests(t *testing.T, newHarness func(t *testing.T) Harness) {
	probe := newHarness(t)
	hasMeta, hasTranscripts := probe.Metadata() != nil, probe.Transcripts() != nil
	probe.Close()
	if !hasMeta && !hasTranscripts {
		t.Fatal("storagetest: the harness returns neither a metadata nor a transcript store")
	}
	run := func(t *testing.T, tests []test) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) { tc.fn(t, newEnv(t, newHarness)) })
		}
	}
	if hasMeta {
		t.Run("Metadata", func(t *testing.T) { run(t, metadataTests) })
	}
	if hasTranscripts {
		t.Run("Transcripts", func(t *testing.T) { run(t, transcriptTests) })
	}
}

type test struct {
	name string
	fn   func(*testing.T, *env)
}

// env is one test's harness.
type env struct {
	h   Harness
	m   storage.MetadataStore
	ts  storage.TranscriptStore
	now time.Time
}

func newEnv(t *testing.T, newHarness func(*testing.T) Harness) *env {
	h := newHarness(t)
	t.Cleanup(h.Close)
	e := &env{h: h, m: h.Metadata(), ts: h.Transcripts()}
	e.setNow(base)
	return e
}

func (e *env) setNow(t time.Time) {
	e.now = t
	e.h.SetNow(t)
}

var (
	orgA, orgB     = auth.OrgID("org-a"), auth.OrgID("org-b")
	scopeA, scopeB = auth.InternalScope(orgA), auth.InternalScope(orgB)
	// base is a whole second; the suite also uses base plus fractions, which
	// a driver that compares times as RFC 3339 text would misorder.
	base = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	cet  = time.FixedZone("CET", 3600)
	// t0 has nanoseconds and a zone other than UTC.
	t0 = time.Date(2026, 3, 14, 16, 9, 26, 535897932, cet)
)

var cmpOpts = cmp.Options{cmpopts.EquateEmpty()}

func background() context.Context { return context.Background() }

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// wantErr reports an error unless err wraps target.
func wantErr(t *testing.T, err, target error, format string, args ...any) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error = %v, want one wrapping %v", fmt.Sprintf(format, args...), err, target)
	}
}

// must fails the test now if err is not nil.
func must(t *testing.T, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// sameFailure checks that a call on another organisation's id failed exactly
// as the same call on a missing id: the same sentinel and the same message
// once the ids are swapped.
func sameFailure(t *testing.T, what string, foreign, missing error, foreignID, missingID string) {
	t.Helper()
	wantErr(t, foreign, storage.ErrNotFound, "%s on another org's id", what)
	wantErr(t, missing, storage.ErrNotFound, "%s on a missing id", what)
	if foreign == nil || missing == nil {
		return
	}
	if got, want := foreign.Error(), strings.ReplaceAll(missing.Error(), missingID, foreignID); got != want {
		t.Errorf("%s: another org's id fails with %q but a missing id with %q; they must not differ", what, got, want)
	}
}

// redactTranscript is the suite's only use of package redact, the only maker
// of [storage.RedactedTranscript] values.
func redactTranscript(t testing.TB, tr *storage.Transcript) storage.RedactedTranscript {
	t.Helper()
	rt, err := redact.Default.Redact(tr, redact.Sensitive{Goal: tr.Goal})
	if err != nil {
		t.Fatalf("redacting transcript of run %q: %v", tr.Run, err)
	}
	return rt
}

// newTranscript is a small transcript whose log carries note, so that
// transcripts of the same run can differ.
func newTranscript(org auth.OrgID, sub storage.SubmissionID, run storage.RunID, note string) *storage.Transcript {
	return &storage.Transcript{
		Schema:     storage.TranscriptSchema,
		Run:        run,
		Submission: sub,
		Org:        string(org),
		Task:       "task-1",
		Goal:       "find the private goal",
		StartedAt:  t0,
		FinishedAt: t0.Add(time.Minute),
		Exit:       storage.Exit{Code: 0, Reason: "exited"},
		Events: []storage.Event{
			{Seq: 1, At: t0, Kind: storage.EventLifecycle, Lifecycle: &storage.Lifecycle{Phase: "sandbox_started"}},
			{Seq: 2, At: t0.Add(time.Second), Kind: storage.EventToolCall, ToolCall: &storage.ToolCall{
				Name: "search", Arguments: json.RawMessage(`{"q":"flights"}`), Result: json.RawMessage(`{"content":[]}`), Duration: time.Millisecond,
			}},
			{Seq: 3, At: t0.Add(2 * time.Second), Kind: storage.EventLog, Log: &storage.Log{Stream: "stdout", Data: note}},
		},
	}
}

// largeTranscript is a transcript of at least size bytes. Its events share
// one string, so it costs little memory before it is encoded.
func largeTranscript(org auth.OrgID, sub storage.SubmissionID, run storage.RunID, size int) *storage.Transcript {
	tr := newTranscript(org, sub, run, "large")
	chunk := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	for i := range size/len(chunk) + 1 {
		tr.Events = append(tr.Events, storage.Event{
			Seq: 4 + i, At: t0.Add(time.Duration(i) * time.Millisecond), Kind: storage.EventLog,
			Log: &storage.Log{Stream: "stdout", Data: chunk},
		})
	}
	return tr
}

type digest [sha256.Size]byte

func hashOf(t *testing.T, r io.Reader) digest {
	t.Helper()
	d, err := hashStream(r)
	if err != nil {
		t.Fatalf("reading transcript: %v", err)
	}
	return d
}

// hashStream hashes r without holding its bytes; it is safe to call from
// any goroutine.
func hashStream(r io.Reader) (digest, error) {
	h := sha256.New()
	_, err := io.Copy(h, r)
	return digest(h.Sum(nil)), err
}
