package redact

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/storage"
	"github.com/google/go-cmp/cmp"
)

const (
	goal   = "Find the cheapest flight from Oslo to Lima"
	secret = "tok_9f8e7d6c5b4a"
)

var sens = Sensitive{Goal: goal, Secrets: []string{secret, "upstream-password"}}

// fullTranscript sets every field of a transcript, including ones the
// redactor only copies.
func fullTranscript() *storage.Transcript {
	at := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	return &storage.Transcript{
		Schema:     storage.TranscriptSchema,
		Run:        "run-1",
		Submission: "sub-1",
		Org:        "org-1",
		Task:       "task-1",
		Goal:       goal,
		StartedAt:  at,
		FinishedAt: at.Add(time.Minute),
		Exit:       storage.Exit{Code: 3, TimedOut: true, Reason: "gave up on " + goal},
		Failure:    storage.FailureAgent,
		Events: []storage.Event{
			{Seq: 1, At: at, Kind: storage.EventLifecycle, Lifecycle: &storage.Lifecycle{Phase: "sandbox_started", Detail: "env COMPATOOL_MCP_TOKEN=" + secret}},
			{Seq: 2, At: at, Kind: storage.EventLog, Log: &storage.Log{Stream: "stderr", Data: "my goal: " + goal + "\n\t\"quoted\" \x01 ✓\n", Truncated: true}},
			{Seq: 3, At: at, Kind: storage.EventToolCall, ToolCall: &storage.ToolCall{
				Name:      "search",
				Arguments: json.RawMessage(`{ "q" : "` + goal + `", "n": 1.50e+01, "tags": ["<a&b>", "\u00e9"] }`),
				Result:    json.RawMessage(`{"content":[{"type":"text","text":"auth ` + secret + `"}]}`),
				IsError:   true,
				Error:     "upstream-password rejected",
				Duration:  1500 * time.Millisecond,
			}},
			{Seq: 4, At: at, Kind: storage.EventToolCall, ToolCall: &storage.ToolCall{Name: "noargs"}},
			{Seq: 5, At: at, Kind: storage.EventLog, Log: &storage.Log{Stream: "stdout"}},
		},
	}
}

func redactDoc(t *testing.T, tr *storage.Transcript, s Sensitive) []byte {
	t.Helper()
	rt, err := Default.Redact(tr, s)
	if err != nil {
		t.Fatalf("Redact: %v", err)
	}
	doc, err := io.ReadAll(rt.Open())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(doc)) != rt.Size() {
		t.Errorf("Size() = %d, document has %d bytes", rt.Size(), len(doc))
	}
	if !json.Valid(doc) {
		t.Fatalf("output is not valid JSON:\n%s", doc)
	}
	return doc
}

// TestEncodingMatchesEncodingJSON holds the hand-written encoder to the
// document encoding/json makes of the same transcript, so a field added to
// storage.Transcript cannot be silently dropped.
func TestEncodingMatchesEncodingJSON(t *testing.T) {
	tr := fullTranscript()
	tr.Goal = storage.Redacted
	want, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	got := redactDoc(t, tr, Sensitive{})
	var gotV, wantV any
	if err := json.Unmarshal(got, &gotV); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &wantV); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantV, gotV); diff != "" {
		t.Errorf("document differs from encoding/json's (-want +got):\n%s", diff)
	}
	// Raw values are kept byte for byte, not compacted as encoding/json does.
	if !bytes.Contains(got, tr.Events[2].ToolCall.Arguments) {
		t.Errorf("arguments not kept byte for byte in\n%s", got)
	}
}

func TestRedactEveryField(t *testing.T) {
	tr := fullTranscript()
	doc := redactDoc(t, tr, sens)
	var got storage.Transcript
	if err := json.Unmarshal(doc, &got); err != nil {
		t.Fatal(err)
	}
	want := fullTranscript()
	want.Goal = storage.Redacted
	want.Exit.Reason = "gave up on [REDACTED]"
	want.Events[0].Lifecycle.Detail = "env COMPATOOL_MCP_TOKEN=[REDACTED]"
	want.Events[1].Log.Data = "my goal: [REDACTED]\n\t\"quoted\" \x01 ✓\n"
	c := want.Events[2].ToolCall
	c.Arguments = json.RawMessage(`{ "q" : "[REDACTED]", "n": 1.50e+01, "tags": ["<a&b>", "\u00e9"] }`)
	c.Result = json.RawMessage(`{"content":[{"type":"text","text":"auth [REDACTED]"}]}`)
	c.Error = "[REDACTED] rejected"
	want.Events[3].ToolCall.Arguments = json.RawMessage(`null`)
	if diff := cmp.Diff(want, &got); diff != "" {
		t.Errorf("decoded transcript (-want +got):\n%s", diff)
	}
	for _, p := range []string{goal, secret, "upstream-password"} {
		if bytes.Contains(doc, []byte(p)) {
			t.Errorf("document contains %q:\n%s", p, doc)
		}
	}
	if diff := cmp.Diff(fullTranscript(), tr); diff != "" {
		t.Errorf("Redact modified its input (-want +got):\n%s", diff)
	}
}

func TestRedactKeysAndSchema(t *testing.T) {
	tr := fullTranscript()
	tr.Schema = ""
	tr.Goal = ""
	rt, err := Default.Redact(tr, sens)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{rt.RunID(), rt.Org(), rt.SubmissionID()}
	if diff := cmp.Diff([]string{"run-1", "org-1", "sub-1"}, got); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	var dec storage.Transcript
	if err := json.NewDecoder(rt.Open()).Decode(&dec); err != nil {
		t.Fatal(err)
	}
	if dec.Schema != storage.TranscriptSchema || dec.Goal != storage.Redacted {
		t.Errorf("schema %q, goal %q; want %q, %q", dec.Schema, dec.Goal, storage.TranscriptSchema, storage.Redacted)
	}
	if tr.Schema != "" {
		t.Errorf("Redact set the input's schema")
	}
}

func TestRedactRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*storage.Transcript)
	}{
		{"no run", func(t *storage.Transcript) { t.Run = "" }},
		{"no org", func(t *storage.Transcript) { t.Org = "" }},
		{"other schema", func(t *storage.Transcript) { t.Schema = "compatool.transcript/v0" }},
		{"unwritable time", func(t *storage.Transcript) { t.Events[1].At = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := fullTranscript()
			tc.edit(tr)
			rt, err := Default.Redact(tr, sens)
			if !errors.Is(err, storage.ErrInvalid) {
				t.Errorf("Redact error = %v, want storage.ErrInvalid", err)
			}
			if !rt.IsZero() {
				t.Errorf("Redact returned a transcript with its error")
			}
		})
	}
	if _, err := Default.Redact(nil, sens); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Redact(nil) error = %v, want storage.ErrInvalid", err)
	}
}

// TestRawJSON pins how tool-call arguments are rewritten: only a string
// with a match changes, whatever its escapes; everything else stays byte
// for byte.
func TestRawJSON(t *testing.T) {
	s := Sensitive{Goal: "Goal/é\"x", Secrets: []string{"SECRET", "😀emoji"}}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"untouched", ` {"a" : [1, -0.5e-3, true, false, null, "x\n", "\u0041"], "b":{}} `, ""},
		{"plain", `{"q":"say SECRET now","n":1.0}`, `{"q":"say [REDACTED] now","n":1.0}`},
		{"key", `{"SECRET":1,"k":"v"}`, `{"[REDACTED]":1,"k":"v"}`},
		{"unicode escapes", `["\u0053\u0045CRET!"]`, `["[REDACTED]!"]`},
		{"escaped solidus and quote", `["Goal\/\u00e9\"x", "Goal\/é"]`, `["[REDACTED]", "Goal\/é"]`},
		{"surrogate pair", `"\ud83d\ude00emoji \n"`, `"[REDACTED] \n"`},
		{"other escapes re-encoded on a match", `"\/ SECRET \u0001\t"`, `"/ [REDACTED] \u0001\t"`},
		{"unmatched escapes kept", `"\/\u0041\ud800"`, ""},
		{"nested", `[[[{"a":[{"b":"xSECRETx"}]}]]]`, `[[[{"a":[{"b":"x[REDACTED]x"}]}]]]`},
		{"invalid: stored as string", `{"q":"SECRET"`, `"{\"q\":\"[REDACTED]\""`},
		{"invalid: two values", `1 2`, `"1 2"`},
		{"invalid: bad escape", `"\x"`, `"\"\\x\""`},
		{"invalid: raw control", "\"a\x01\"", `"\"a\u0001\""`},
		{"invalid: leading zero", `01`, `"01"`},
		{"invalid: trailing comma", `[1,]`, `"[1,]"`},
		{"invalid: too deep", strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1), `"` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `"`},
		{"deepest allowed", strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == "" {
				want = tc.in
			}
			r := rawRedactor{m: Compile(s)}
			got := string(r.appendRaw([]byte("prefix:"), []byte(tc.in)))
			if diff := cmp.Diff("prefix:"+want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if !json.Valid([]byte(want)) {
				t.Errorf("output %q is not valid JSON", want)
			}
			if _, ok := r.appendValid(nil, []byte(tc.in)); ok != json.Valid([]byte(tc.in)) {
				t.Errorf("valid = %v, encoding/json says %v", ok, !ok)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	m := Compile(sens)
	done := make(chan string)
	for range 8 {
		go func() {
			doc, err := Default.Redact(fullTranscript(), sens)
			if err != nil {
				done <- err.Error()
				return
			}
			b, _ := io.ReadAll(doc.Open())
			done <- m.ReplaceString(string(b))
		}()
	}
	first := <-done
	for range 7 {
		if got := <-done; got != first {
			t.Errorf("concurrent results differ")
		}
	}
}

// TestParts holds the encoding in parallel parts to the encoding in one.
func TestParts(t *testing.T) {
	tr, s := benchCase()
	tr = &storage.Transcript{Run: "r", Org: "o", Events: slices.Clone(tr.Events[:500])}
	bad := tr.Events[400]
	bad.At = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)
	tr.Events[400] = bad
	encode := func(parts int) ([]byte, error) {
		e := encoder{raw: rawRedactor{m: Compile(s)}}
		err := e.parts(tr.Events, estimate(tr), parts)
		return e.buf, err
	}
	want, wantErr := encode(1)
	if !strings.Contains(fmt.Sprint(wantErr), "event 400:") {
		t.Fatalf("error %v does not name event 400", wantErr)
	}
	for parts := 2; parts <= 7; parts++ {
		got, err := encode(parts)
		if !bytes.Equal(got, want) {
			t.Errorf("%d parts: output differs from one part's", parts)
		}
		if fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Errorf("%d parts: error %v, want %v", parts, err, wantErr)
		}
	}
}
