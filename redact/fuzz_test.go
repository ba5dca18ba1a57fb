package redact

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/compatool/compatool/storage"
)

// texts decodes a redacted document and returns every free text in it: the
// goal first, then the exit reason, event texts, and every string and key of
// the raw values.
func texts(t *testing.T, doc []byte) []string {
	t.Helper()
	if !json.Valid(doc) {
		t.Fatalf("output is not valid JSON:\n%q", doc)
	}
	var tr storage.Transcript
	if err := json.Unmarshal(doc, &tr); err != nil {
		t.Fatalf("output does not decode as a transcript: %v\n%q", err, doc)
	}
	out := []string{tr.Goal, tr.Exit.Reason}
	// Tokens, not a decoded map, so duplicate keys are all seen.
	raw := func(r json.RawMessage) {
		if len(r) == 0 {
			return
		}
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		for {
			tok, err := d.Token()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("raw value %q does not decode: %v", r, err)
			}
			if s, ok := tok.(string); ok {
				out = append(out, s)
			}
		}
	}
	for _, e := range tr.Events {
		if c := e.ToolCall; c != nil {
			out = append(out, c.Name, c.Error)
			raw(c.Arguments)
			raw(c.Result)
		}
		if l := e.Log; l != nil {
			out = append(out, l.Stream, l.Data)
		}
		if l := e.Lifecycle; l != nil {
			out = append(out, l.Phase, l.Detail)
		}
	}
	return out
}

// leak returns a pattern that occurs in s other than where it overlaps a
// [storage.Redacted] marker (see the package doc), or "".
func leak(s string, pats []string) string {
	var marks [][2]int
	for i := 0; ; {
		j := strings.Index(s[i:], storage.Redacted)
		if j < 0 {
			break
		}
		marks = append(marks, [2]int{i + j, i + j + len(storage.Redacted)})
		i += j + 1
	}
	for _, p := range pats {
		if p == "" {
			continue
		}
	occurrences:
		for i := 0; ; i++ {
			j := strings.Index(s[i:], p)
			if j < 0 {
				break
			}
			i += j
			for _, m := range marks {
				if m[0] < i+len(p) && i < m[1] {
					continue occurrences
				}
			}
			return p
		}
	}
	return ""
}

// checkRedacted asserts the fuzz properties of Redact's output for tr.
func checkRedacted(t *testing.T, tr *storage.Transcript, s Sensitive) []string {
	t.Helper()
	rt, err := Default.Redact(tr, s)
	if err != nil {
		t.Fatalf("Redact: %v", err)
	}
	var doc bytes.Buffer
	doc.ReadFrom(rt.Open())
	all := texts(t, doc.Bytes())
	if all[0] != storage.Redacted {
		t.Fatalf("goal = %q, want %q", all[0], storage.Redacted)
	}
	pats := append([]string{s.Goal}, s.Secrets...)
	for _, text := range all {
		if p := leak(text, pats); p != "" {
			t.Fatalf("pattern %q survives in %q\ndocument: %s", p, text, doc.Bytes())
		}
	}
	return all
}

func transcriptWith(text string, args []byte) *storage.Transcript {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &storage.Transcript{
		Run: "run-1", Org: "org-1", Goal: "the goal",
		Exit: storage.Exit{Reason: text},
		Events: []storage.Event{
			{Seq: 1, At: at, Kind: storage.EventLog, Log: &storage.Log{Stream: "stdout", Data: text}},
			{Seq: 2, At: at, Kind: storage.EventLifecycle, Lifecycle: &storage.Lifecycle{Phase: "graded", Detail: text}},
			{Seq: 3, At: at, Kind: storage.EventToolCall, ToolCall: &storage.ToolCall{Name: text, Arguments: args, Result: args, Error: text}},
		},
	}
}

// escapedForms are JSON string literals of s written in several ways an
// agent might write them.
func escapedForms(s string) []string {
	plain, _ := json.Marshal(s)
	var all, half strings.Builder
	for i, r := range s {
		var u string
		for _, c := range utf16.Encode([]rune{r}) {
			u += fmt.Sprintf(`\u%04X`, c)
		}
		all.WriteString(u)
		if i%2 == 0 {
			half.WriteString(u)
		} else {
			b, _ := json.Marshal(string(r))
			half.Write(b[1 : len(b)-1])
		}
	}
	return []string{
		string(plain),
		`"` + all.String() + `"`,
		`"` + half.String() + `"`,
		strings.ReplaceAll(string(plain), "/", `\/`),
	}
}

// TestOverlapNeverLeaks checks, for patterns that overlap or nest, that no
// pattern survives in the document, neither raw nor, after decoding, in any
// escaped form an agent wrote.
func TestOverlapNeverLeaks(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Sensitive
		text string
	}{
		{"secret contains goal", Sensitive{Goal: "Book/a \"room\"", Secrets: []string{"key=Book/a \"room\"=end"}}, "x key=Book/a \"room\"=end Book/a \"room\" y"},
		{"goal contains secret", Sensitive{Goal: "use tok_abc to log in", Secrets: []string{"tok_abc"}}, "use tok_abc to log in; tok_abc"},
		{"overlap", Sensitive{Goal: "abcdef", Secrets: []string{"defghi"}}, "abcdefghi abcdef defghi"},
		{"chain", Sensitive{Goal: "αβγ", Secrets: []string{"γδε", "εζη"}}, "αβγδεζη"},
		{"astral", Sensitive{Goal: "😀 smile 😀", Secrets: []string{"smile"}}, "😀 smile 😀 smile"},
		{"self overlap", Sensitive{Goal: "aa"}, "aaaaaaa"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pats := append([]string{tc.s.Goal}, tc.s.Secrets...)
			for _, form := range escapedForms(tc.text) {
				args := []byte(`{` + form + `:[` + form + `,{"k":` + form + `}]}`)
				tr := transcriptWith(tc.text, args)
				all := checkRedacted(t, tr, tc.s)
				for _, text := range all {
					for _, p := range pats {
						if strings.Contains(text, p) {
							t.Errorf("form %s: %q contains %q", form, text, p)
						}
					}
				}
				rt, _ := Default.Redact(tr, tc.s)
				var doc bytes.Buffer
				doc.ReadFrom(rt.Open())
				for _, p := range pats {
					for _, enc := range escapedForms(p) {
						if bytes.Contains(doc.Bytes(), []byte(enc[1:len(enc)-1])) {
							t.Errorf("document contains %s:\n%s", enc, doc.Bytes())
						}
					}
				}
			}
		})
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("goal text", "s3cret", "", "say goal text and s3cret", []byte(`{"q":"goal text","k":[1,2.5e3,null]}`))
	f.Add("Goal/é\"x", "SECRET", "😀emoji", "Goal/é\"x", []byte(`["Goal\/\u00e9\"x","\u0053\u0045CRET","\ud83d\ude00emoji"]`))
	f.Add("abcdef", "defghi", "cd", "abcdefghi", []byte(`{"abc\u0064efghi":"\u0061bcdef"}`))
	f.Add("a", "b", "", "ab\x00\xff", []byte(`"a\u0000b\ud800"`))
	f.Add("é", "\ufffd", "", "\xe9 é", []byte("\"\xe9\""))
	f.Add("goal", "tok", "", "not json", []byte(`{"q":"goal"`))
	f.Add("x]y", "ED", "[RE", "x]y [REDACTED] ED", []byte(`"x]y"`))
	f.Fuzz(func(t *testing.T, goal, sec1, sec2, text string, args []byte) {
		s := Sensitive{Goal: goal, Secrets: []string{sec1, sec2}}
		checkRedacted(t, transcriptWith(text, args), s)

		// Strings without a match are kept byte for byte.
		r := rawRedactor{m: Compile(s)}
		out, ok := r.appendValid(nil, args)
		if ok != json.Valid(args) {
			t.Fatalf("valid = %v for %q, encoding/json says %v", ok, args, !ok)
		}
		if ok {
			tr := transcriptWith("", args)
			doc, _ := json.Marshal(tr)
			matched := false
			for _, text := range texts(t, doc)[1:] {
				matched = matched || Compile(s).Contains(text)
			}
			if !matched && !bytes.Equal(out, args) {
				t.Fatalf("nothing matched, yet %q became %q", args, out)
			}
		}
	})
}
