package redact

import (
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/compatool/compatool/storage"
)

// Matcher finds every occurrence of a fixed set of patterns in one pass. It
// is compiled once per [Sensitive] by [Compile] and is safe for concurrent
// use. The zero Matcher matches nothing.
//
// It is a Wu-Manber matcher: a window as long as the shortest pattern slides
// over the text, and a table indexed by a hash of the window's last three
// bytes (fewer for very short patterns) says how far it may jump without
// passing over an occurrence. With a goal and twenty 43-byte secrets the
// window jumps tens of bytes at a time, so the cost hardly grows with the
// number of patterns, unlike a loop of per-pattern searches.
//
// Matching is byte-wise and case-sensitive. Where occurrences overlap or
// nest, the whole region they cover is replaced by one [storage.Redacted], so
// no part of any pattern is left behind; the region is widened to whole UTF-8
// characters, so valid text stays valid.
type Matcher struct {
	pats  []string // distinct, non-empty
	min   int      // length of the shortest pattern
	block int      // bytes hashed per window: 3, or fewer for short patterns
	// shift[h] is how far the window may move when its last block is h;
	// 0 means a pattern's first min bytes may end here: verify.
	shift []uint8
	// cands lists, sorted by block, the patterns whose first min bytes
	// end with that block.
	cands []cand
}

type cand struct {
	block uint16
	pat   int32
}

// text is what a Matcher searches.
type text interface{ ~string | ~[]byte }

// Compile builds the matcher for s's goal and secrets. Empty strings are
// ignored; with none left the matcher matches nothing.
func Compile(s Sensitive) *Matcher {
	var pats []string
	for _, p := range append([]string{s.Goal}, s.Secrets...) {
		if p != "" && !slices.Contains(pats, p) {
			pats = append(pats, p)
		}
	}
	m := &Matcher{pats: pats}
	if len(pats) == 0 {
		return m
	}
	m.min = len(pats[0])
	for _, p := range pats {
		m.min = min(m.min, len(p))
	}
	// Three bytes tell a window of prose or code from the patterns far better
	// than two; short patterns need a shorter block to jump at all.
	m.block = min(3, max(1, m.min/2))
	m.shift = make([]uint8, []int{1 << 8, 1 << 16, 1 << hashBits}[m.block-1])
	far := uint8(min(m.min-m.block+1, 255))
	for i := range m.shift {
		m.shift[i] = far
	}
	for i, p := range pats {
		// j is the index, within p's first min bytes, of a block's last byte.
		for j := m.block - 1; j < m.min; j++ {
			h := m.hash(p, j)
			m.shift[h] = min(m.shift[h], uint8(min(m.min-1-j, 255)))
		}
		m.cands = append(m.cands, cand{block: m.hash(p, m.min-1), pat: int32(i)})
	}
	slices.SortFunc(m.cands, func(a, b cand) int { return int(a.block) - int(b.block) })
	return m
}

// hash is the block of s ending at index i.
func (m *Matcher) hash(s string, i int) uint16 { return hash(s, i, m.block) }

// hashBits sizes the table of three-byte blocks: 16 KiB stays in L1 cache,
// which measured faster than fewer collisions in a larger table.
const hashBits = 14

func hash[T text](s T, i, block int) uint16 {
	switch block {
	case 1:
		return uint16(s[i])
	case 2:
		return uint16(s[i-1])<<8 | uint16(s[i])
	}
	return uint16((uint32(s[i-2]) | uint32(s[i-1])<<8 | uint32(s[i])<<16) * 0x9E3779B1 >> (32 - hashBits))
}

// Empty reports whether m has no pattern to match.
func (m *Matcher) Empty() bool { return len(m.pats) == 0 }

// find returns the leftmost occurrence of any pattern in s that starts in
// [from, before), as its start and the end of the longest pattern found
// there; start is -1 if there is none.
func find[T text](m *Matcher, s T, from, before int) (start, end int) {
	if m.min == 0 {
		return -1, -1
	}
	n := len(s)
	pos := from + m.min - 1 // last byte of the window
	limit := min(n, before+m.min-1)
	for pos < limit {
		h := hash(s, pos, m.block)
		if sh := m.shift[h]; sh != 0 {
			pos += int(sh)
			continue
		}
		start, end = pos-m.min+1, -1
		i, _ := slices.BinarySearchFunc(m.cands, h, func(c cand, h uint16) int { return int(c.block) - int(h) })
		for ; i < len(m.cands) && m.cands[i].block == h; i++ {
			p := m.pats[m.cands[i].pat]
			if e := start + len(p); e <= n && e > end && string(s[start:e]) == p {
				end = e
			}
		}
		if end >= 0 {
			return start, end
		}
		pos++
	}
	return -1, -1
}

// span returns the next region of s, at or after from, covered by pattern
// occurrences that overlap one another; start is -1 if there is none. The
// region is widened to whole UTF-8 sequences, so a pattern that ends or
// begins inside a character never leaves part of it behind: the output of
// valid UTF-8 stays valid, and decoding it cannot bring a pattern back.
func span[T text](m *Matcher, s T, from int) (start, end int) {
	start, end = find(m, s, from, len(s))
	if start < 0 {
		return start, end
	}
	for i := 0; i < utf8.UTFMax-1 && start > from && continuation(s[start]); i++ {
		start--
	}
	for at := start; ; {
		for i := 0; i < utf8.UTFMax-1 && end < len(s) && continuation(s[end]); i++ {
			end++
		}
		var e int
		if at, e = find(m, s, at+1, end); at < 0 {
			return start, end
		}
		end = max(end, e)
	}
}

func continuation(c byte) bool { return c&0xC0 == 0x80 }

// AppendReplace appends src to dst with every region covered by pattern
// occurrences replaced by [storage.Redacted], and returns the extended
// buffer.
func (m *Matcher) AppendReplace(dst, src []byte) []byte {
	last := 0
	for from := 0; ; {
		start, end := span(m, src, from)
		if start < 0 {
			return append(dst, src[last:]...)
		}
		dst = append(append(dst, src[last:start]...), storage.Redacted...)
		last, from = end, end
	}
}

// Replace returns a copy of b with every region covered by pattern
// occurrences replaced by [storage.Redacted].
func (m *Matcher) Replace(b []byte) []byte {
	return m.AppendReplace(make([]byte, 0, len(b)), b)
}

// ReplaceString is [Matcher.Replace] for a string. It returns s itself when
// nothing matches.
func (m *Matcher) ReplaceString(s string) string {
	start, end := span(m, s, 0)
	if start < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for start >= 0 {
		b.WriteString(s[last:start])
		b.WriteString(storage.Redacted)
		last = end
		start, end = span(m, s, end)
	}
	b.WriteString(s[last:])
	return b.String()
}

// Contains reports whether any pattern occurs in s.
func (m *Matcher) Contains(s string) bool {
	start, _ := find(m, s, 0, len(s))
	return start >= 0
}
