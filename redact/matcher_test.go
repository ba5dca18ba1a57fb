package redact

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/compatool/compatool/storage"
	"github.com/google/go-cmp/cmp"
)

// naiveReplace is the reference: every byte covered by an occurrence of a
// pattern is replaced, each region of overlapping occurrences by one marker.
func naiveReplace(s string, pats []string) string {
	type iv struct{ start, end int }
	var ivs []iv
	for i := range len(s) {
		end := -1
		for _, p := range pats {
			if p != "" && strings.HasPrefix(s[i:], p) {
				end = max(end, i+len(p))
			}
		}
		if end < 0 {
			continue
		}
		if n := len(ivs); n > 0 && i < ivs[n-1].end {
			ivs[n-1].end = max(ivs[n-1].end, end)
		} else {
			ivs = append(ivs, iv{i, end})
		}
	}
	var b strings.Builder
	last := 0
	for _, v := range ivs {
		b.WriteString(s[last:v.start] + storage.Redacted)
		last = v.end
	}
	return b.String() + s[last:]
}

func TestMatcherOverlap(t *testing.T) {
	for _, tc := range []struct {
		name string
		goal string
		secs []string
		in   string
		want string
	}{
		{"none", "goal", nil, "no match here", "no match here"},
		{"goal", "goal", nil, "the goal is the goal", "the [REDACTED] is the [REDACTED]"},
		{"empty patterns ignored", "", []string{"", ""}, "text", "text"},
		{"empty goal, one secret", "", []string{"tok"}, "a tok b", "a [REDACTED] b"},
		{"secret contains goal", "abc", []string{"xxabcxx"}, "1xxabcxx2abc3", "1[REDACTED]2[REDACTED]3"},
		{"goal contains secret", "the key is s3cr3t ok", []string{"s3cr3t"}, "the key is s3cr3t ok; s3cr3t", "[REDACTED]; [REDACTED]"},
		{"overlap: no leftover", "abcdef", []string{"defghi"}, "_abcdefghi_", "_[REDACTED]_"},
		{"overlap chain", "abc", []string{"cde", "efg"}, "abcdefg", "[REDACTED]"},
		{"leftmost longest", "ab", []string{"abcd", "bc"}, "abcde", "[REDACTED]e"},
		{"adjacent stay apart", "ab", []string{"cd"}, "abcd", "[REDACTED][REDACTED]"},
		{"self overlap", "aa", nil, "aaaaa", "[REDACTED]"},
		{"one byte", "a", []string{"b"}, "cabbac", "c[REDACTED][REDACTED][REDACTED][REDACTED]c"},
		{"duplicate patterns", "dup", []string{"dup", "dup"}, "a dup", "a [REDACTED]"},
		{"at the ends", "xy", nil, "xy-xy", "[REDACTED]-[REDACTED]"},
		{"shorter than pattern", "longer", nil, "long", "long"},
		{"part of a character", "\xbd", []string{"\xe2\x9c"}, "a\ufffdb✓c", "a[REDACTED]b[REDACTED]c"},
		{"non-ASCII", "ключ", []string{"秘密"}, "ключ и 秘密.", "[REDACTED] и [REDACTED]."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Sensitive{Goal: tc.goal, Secrets: tc.secs}
			m := Compile(s)
			if diff := cmp.Diff(tc.want, m.ReplaceString(tc.in)); diff != "" {
				t.Errorf("ReplaceString (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, string(m.Replace([]byte(tc.in)))); diff != "" {
				t.Errorf("Replace (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, Default.String(tc.in, s)); diff != "" {
				t.Errorf("Default.String (-want +got):\n%s", diff)
			}
			got := m.ReplaceString(tc.in)
			for _, p := range append([]string{tc.goal}, tc.secs...) {
				if p != "" && strings.Contains(got, p) {
					t.Errorf("output %q still contains %q", got, p)
				}
			}
			if want := tc.want != tc.in; m.Contains(tc.in) != want {
				t.Errorf("Contains(%q) = %v, want %v", tc.in, !want, want)
			}
		})
	}
}

// TestMatcherRandom holds the matcher to the reference on texts and patterns
// drawn from small alphabets, where occurrences and overlaps are frequent.
func TestMatcherRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	word := func(alpha string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alpha[r.IntN(len(alpha))]
		}
		return string(b)
	}
	for i := range 20000 {
		alpha := "ab"[:1+i%2] + "cdefgh"[:i%7]
		var pats []string
		for range 1 + r.IntN(5) {
			pats = append(pats, word(alpha, r.IntN(9)))
		}
		in := word(alpha, r.IntN(200))
		m := Compile(Sensitive{Goal: pats[0], Secrets: pats[1:]})
		if got, want := m.ReplaceString(in), naiveReplace(in, pats); got != want {
			t.Fatalf("patterns %q, text %q:\ngot  %q\nwant %q", pats, in, got, want)
		}
	}
}

// TestMatcherRandomLong does the same with patterns long enough for
// three-byte blocks, so hash collisions and long jumps are exercised.
func TestMatcherRandomLong(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 3000 {
		alpha := "abcdefghijklmnop"[:2+i%15]
		text := make([]byte, 2000)
		for j := range text {
			text[j] = alpha[r.IntN(len(alpha))]
		}
		var pats []string
		for range 1 + r.IntN(21) {
			// Often a piece of the text, so there is something to find.
			n := 6 + r.IntN(60)
			if at := r.IntN(len(text) - n); r.IntN(2) == 0 {
				pats = append(pats, string(text[at:at+n]))
			} else {
				pats = append(pats, string(text[at:at+n-1])+"z")
			}
		}
		m := Compile(Sensitive{Goal: pats[0], Secrets: pats[1:]})
		if m.block != 3 {
			t.Fatalf("block = %d for patterns of 6 bytes or more", m.block)
		}
		if got, want := string(m.Replace(text)), naiveReplace(string(text), pats); got != want {
			t.Fatalf("patterns %q:\ngot  %q\nwant %q", pats, got, want)
		}
	}
}

func TestMatcherEmpty(t *testing.T) {
	m := Compile(Sensitive{Secrets: []string{""}})
	if !m.Empty() || m.Contains("anything") || m.ReplaceString("anything") != "anything" {
		t.Errorf("a matcher without patterns matched")
	}
	if Compile(Sensitive{Goal: "g"}).Empty() {
		t.Errorf("Empty() = true with a goal")
	}
}
