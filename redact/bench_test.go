package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/storage"
)

// benchCase is a ~10 MB transcript of log events and tool calls with a goal
// of ~120 bytes and 20 secrets of 43 bytes, planted a few times, some of
// them escaped.
var benchCase = sync.OnceValues(func() (*storage.Transcript, Sensitive) {
	benchPlanted = 0
	r := rand.New(rand.NewPCG(7, 8))
	s := Sensitive{Goal: "Reconcile the March invoices of ACME Corp against the ledger, flag duplicates over $10,000 and e-mail the CFO a summary."}
	for range 20 {
		key := make([]byte, 32)
		for i := range key {
			key[i] = byte(r.Uint32())
		}
		s.Secrets = append(s.Secrets, base64.RawURLEncoding.EncodeToString(key))
	}
	words := strings.Fields("the invoice ledger total amount vendor paid due reconcile match row column error retry " +
		"fetch query result page token status ok failed duplicate summary report month march april customer id")
	sentence := func(n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[r.IntN(len(words))])
		}
		return b.String()
	}
	quote := func(v string) string { b, _ := json.Marshal(v); return string(b) }
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	t := &storage.Transcript{Schema: storage.TranscriptSchema, Run: "run-bench", Org: "org-bench", Submission: "sub-bench",
		Task: "task-bench", Goal: s.Goal, StartedAt: at, FinishedAt: at.Add(time.Hour)}
	size := 0
	for seq := 0; size < 10<<20; seq++ {
		ev := storage.Event{Seq: seq, At: at.Add(time.Duration(seq) * time.Millisecond)}
		switch seq % 10 {
		case 0, 1, 2, 3, 4: // agent logs, a few lines each
			var b strings.Builder
			for range 3 + r.IntN(12) {
				fmt.Fprintf(&b, "%s level=info step=%d msg=%q\n", ev.At.Format(time.RFC3339Nano), seq, sentence(8+r.IntN(20)))
			}
			if seq%397 == 0 {
				benchPlanted++
				b.WriteString("my task is: " + s.Goal + "\n")
			}
			ev.Kind, ev.Log = storage.EventLog, &storage.Log{Stream: "stderr", Data: b.String()}
			size += b.Len()
		case 5, 6, 7, 8: // tool calls with JSON arguments and a text result
			args := fmt.Sprintf(`{"query":%s,"page":%d,"filters":{"vendor":%s,"min_amount":1.5e3}}`, quote(sentence(6)), r.IntN(50), quote(sentence(2)))
			if seq%401 == 5 {
				benchPlanted++
				args = `{"auth":"` + s.Secrets[r.IntN(20)] + `"}`
			}
			var text strings.Builder
			for range 5 + r.IntN(25) {
				fmt.Fprintf(&text, "| %d | %s | %d.%02d |\n", r.IntN(1e6), sentence(4), r.IntN(1e5), r.IntN(100))
			}
			if seq%803 == 6 {
				benchPlanted++
				text.WriteString("goal echoed: " + s.Goal)
			}
			result := `{"content":[{"type":"text","text":` + quote(text.String()) + `}],"isError":false}`
			if seq%1201 == 7 { // the goal in \u escapes
				benchPlanted++
				result = `{"content":[{"type":"text","text":"` + strings.ReplaceAll(s.Goal, "e", `\u0065`) + `"}]}`
			}
			ev.Kind, ev.ToolCall = storage.EventToolCall, &storage.ToolCall{Name: "ledger_search",
				Arguments: json.RawMessage(args), Result: json.RawMessage(result), Duration: time.Duration(r.IntN(1e9))}
			size += len(args) + len(result)
		default:
			ev.Kind, ev.Lifecycle = storage.EventLifecycle, &storage.Lifecycle{Phase: "heartbeat", Detail: sentence(5)}
		}
		t.Events = append(t.Events, ev)
	}
	return t, s
})

// benchPlanted counts the occurrences benchCase planted.
var benchPlanted int

// benchDoc is the transcript encoded by encoding/json, before redaction.
var benchDoc = sync.OnceValue(func() []byte {
	t, _ := benchCase()
	doc, err := json.Marshal(t)
	if err != nil {
		panic(err)
	}
	return doc
})

func BenchmarkRedact(b *testing.B) {
	t, s := benchCase()
	b.SetBytes(int64(len(benchDoc())))
	for b.Loop() {
		if _, err := Default.Redact(t, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStringsReplacer is the baseline: strings.Replacer with the same
// 21 patterns over the same transcript, already encoded.
func BenchmarkStringsReplacer(b *testing.B) {
	_, s := benchCase()
	doc := string(benchDoc())
	var pairs []string
	for _, p := range append([]string{s.Goal}, s.Secrets...) {
		pairs = append(pairs, p, storage.Redacted)
	}
	rep := strings.NewReplacer(pairs...)
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		_ = rep.Replace(doc)
	}
}

// BenchmarkMatcher is the matcher alone over the encoded transcript.
func BenchmarkMatcher(b *testing.B) {
	_, s := benchCase()
	doc := benchDoc()
	m := Compile(s)
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		_ = m.Replace(doc)
	}
}

// BenchmarkEncodingJSON is encoding/json alone, for scale.
func BenchmarkEncodingJSON(b *testing.B) {
	t, _ := benchCase()
	b.SetBytes(int64(len(benchDoc())))
	for b.Loop() {
		if _, err := json.Marshal(t); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBenchCaseRedacted keeps the benchmark honest: its planted
// occurrences, escaped ones included, are all found.
func TestBenchCaseRedacted(t *testing.T) {
	tr, s := benchCase()
	rt, err := Default.Redact(tr, s)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := io.ReadAll(rt.Open())
	if err != nil {
		t.Fatal(err)
	}
	// One more marker: the goal field.
	if got, want := bytes.Count(doc, []byte(storage.Redacted)), benchPlanted+1; got != want {
		t.Errorf("%d markers in the redacted benchmark transcript, want %d", got, want)
	}
	for _, text := range texts(t, doc) {
		if p := leak(text, append([]string{s.Goal}, s.Secrets...)); p != "" {
			t.Fatalf("%q survives in %q", p, text)
		}
	}
}
