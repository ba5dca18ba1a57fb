package redact

import (
	"errors"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/compatool/compatool/storage"
)

// maxDepth bounds the nesting of raw JSON an agent sends, as encoding/json
// does, so a hostile document cannot exhaust the stack.
const maxDepth = 10000

var errSyntax = errors.New("invalid JSON")

// appendString appends s as a JSON string with its pattern occurrences
// redacted. Invalid UTF-8 is first replaced byte by byte with U+FFFD, as
// encoding/json does, so what is searched is exactly what a reader decodes.
func appendString(dst []byte, m *Matcher, s string) []byte {
	if out, ok := appendValidString(dst, m, s); ok {
		return out
	}
	out, _ := appendValidString(dst, m, string(validUTF8([]byte(s))))
	return out
}

// appendValidString is appendString for valid UTF-8 s, checked on the way
// rather than in a pass of its own; ok is false if s is not valid.
func appendValidString[T text](dst []byte, m *Matcher, s T) (out []byte, ok bool) {
	out = append(dst, '"')
	last := 0
	for from := 0; ; {
		start, end := span(m, s, from)
		if start < 0 {
			break
		}
		if out, ok = escape(out, s[last:start]); !ok {
			return dst, false
		}
		out = append(out, storage.Redacted...)
		last, from = end, end
	}
	if out, ok = escape(out, s[last:]); !ok {
		return dst, false
	}
	return append(out, '"'), true
}

// escape appends s with the characters JSON requires escaped; ok is false
// if s is not valid UTF-8.
func escape[T text](dst []byte, s T) (out []byte, ok bool) {
	last := 0
	for i := 0; i < len(s); {
		// Eight bytes at a time to the next byte that needs a look.
		if i+8 <= len(s) {
			m := special(load8(s, i))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		}
		c := s[i]
		if c >= utf8.RuneSelf {
			n := runeLen(s, i)
			if n == 0 {
				return dst, false
			}
			i += n
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[last:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			const hex = "0123456789abcdef"
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		last = i
	}
	return append(dst, s[last:]...), true
}

// runeLen is the length of the valid UTF-8 sequence that starts s[i:], or 0
// if there is none. It accepts what utf8.DecodeRune accepts.
func runeLen[T text](s T, i int) int {
	c, n := s[i], len(s)-i
	lo, hi := byte(0x80), byte(0xBF)
	switch {
	case c < utf8.RuneSelf:
		return 1
	case c < 0xC2:
		return 0
	case c < 0xE0:
		if n >= 2 && continuation(s[i+1]) {
			return 2
		}
		return 0
	case c < 0xF0:
		if c == 0xE0 {
			lo = 0xA0
		} else if c == 0xED {
			hi = 0x9F
		}
		if n >= 3 && s[i+1] >= lo && s[i+1] <= hi && continuation(s[i+2]) {
			return 3
		}
		return 0
	case c < 0xF5:
		if c == 0xF0 {
			lo = 0x90
		} else if c == 0xF4 {
			hi = 0x8F
		}
		if n >= 4 && s[i+1] >= lo && s[i+1] <= hi && continuation(s[i+2]) && continuation(s[i+3]) {
			return 4
		}
	}
	return 0
}

// load8 reads s[i:i+8] as a little-endian word; the compiler makes it one load.
func load8[T text](s T, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

const lo, hi = 0x0101010101010101, 0x8080808080808080

// special has the high bit set in each byte of w that is a control
// character, '"', '\\' or not ASCII, and possibly in bytes above such a
// byte (a borrow), never below: the lowest set bit is exact.
func special(w uint64) uint64 {
	zero := func(v uint64) uint64 { return (v - lo) & ^v }
	return ((w-lo*0x20)&^w | zero(w^(lo*'"')) | zero(w^(lo*'\\')) | w) & hi
}

// validUTF8 returns b with each byte that is not part of valid UTF-8
// replaced by U+FFFD, as encoding/json decodes it.
func validUTF8(b []byte) []byte {
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// rawRedactor copies raw JSON values, redacting their strings. Its buffer is
// reused from one string to the next.
type rawRedactor struct {
	m       *Matcher
	raw     []byte
	i       int    // read position in raw
	last    int    // raw[:last] has been copied to out
	out     []byte // output so far
	decoded []byte // scratch for strings with escapes
}

// appendRaw appends the raw JSON value raw to dst with the goal and secrets
// redacted in every string, keys included. Unchanged strings and everything
// between them are copied byte for byte; a string with a match is rewritten.
// If raw is not one valid JSON value, it is treated as text and appended as
// a redacted JSON string instead, so a malformed tool call never fails a run.
func (r *rawRedactor) appendRaw(dst, raw []byte) []byte {
	if out, ok := r.appendValid(dst, raw); ok {
		return out
	}
	return appendString(dst, r.m, string(raw))
}

// appendValid is appendRaw for a valid value; ok is false, and dst's
// contents unchanged, if raw is not one.
func (r *rawRedactor) appendValid(dst, raw []byte) (out []byte, ok bool) {
	r.raw, r.i, r.last, r.out = raw, 0, 0, dst
	r.space()
	err := r.value(0)
	r.space()
	out, r.out, r.raw = r.out, nil, nil
	if err != nil || r.i != len(raw) {
		return dst, false
	}
	return append(out, raw[r.last:]...), true
}

func (r *rawRedactor) space() {
	for r.i < len(r.raw) {
		switch r.raw[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

func (r *rawRedactor) value(depth int) error {
	if r.i >= len(r.raw) {
		return errSyntax
	}
	switch c := r.raw[r.i]; {
	case c == '"':
		return r.string()
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return errSyntax
		}
		return r.container(depth + 1)
	case c == '-' || c >= '0' && c <= '9':
		return r.number()
	case c == 't':
		return r.literal("true")
	case c == 'f':
		return r.literal("false")
	case c == 'n':
		return r.literal("null")
	}
	return errSyntax
}

// container reads an object or an array.
func (r *rawRedactor) container(depth int) error {
	obj := r.raw[r.i] == '{'
	closer := byte(']')
	if obj {
		closer = '}'
	}
	r.i++
	r.space()
	if r.i < len(r.raw) && r.raw[r.i] == closer {
		r.i++
		return nil
	}
	for {
		if obj {
			if r.i >= len(r.raw) || r.raw[r.i] != '"' {
				return errSyntax
			}
			if err := r.string(); err != nil {
				return err
			}
			r.space()
			if r.i >= len(r.raw) || r.raw[r.i] != ':' {
				return errSyntax
			}
			r.i++
			r.space()
		}
		if err := r.value(depth); err != nil {
			return err
		}
		r.space()
		if r.i >= len(r.raw) {
			return errSyntax
		}
		switch r.raw[r.i] {
		case ',':
			r.i++
			r.space()
		case closer:
			r.i++
			return nil
		default:
			return errSyntax
		}
	}
}

func (r *rawRedactor) literal(word string) error {
	if len(r.raw)-r.i < len(word) || string(r.raw[r.i:r.i+len(word)]) != word {
		return errSyntax
	}
	r.i += len(word)
	return nil
}

func (r *rawRedactor) number() error {
	b, i := r.raw, r.i
	digits := func() int {
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i - j
	}
	if b[i] == '-' {
		i++
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if digits() == 0 {
		return errSyntax
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return errSyntax
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return errSyntax
		}
	}
	r.i = i
	return nil
}

// string reads the string token at r.i in one pass, eight bytes at a time
// between the bytes that need a look. A token
// without escapes and with valid UTF-8 is its own decoded text and is
// searched in place; any other is decoded on the way, into r.decoded, and
// that is searched. Only a token with a match is rewritten.
func (r *rawRedactor) string() error {
	b := r.raw
	open := r.i
	i, run := open+1, open+1 // run: start of the bytes not yet decoded
	escaped, bad := false, false
	for {
		// Eight bytes at a time to the next byte that needs a look.
		for i+8 <= len(b) {
			if m := special(load8(b, i)); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(b) {
			return errSyntax
		}
		switch c := b[i]; {
		case c == '"':
			if escaped {
				r.decoded = append(r.decoded, b[run:i]...)
			}
			r.i = i + 1
			return r.search(open, i, escaped, bad)
		case c == '\\':
			if !escaped {
				escaped = true
				r.decoded = r.decoded[:0]
			}
			r.decoded = append(r.decoded, b[run:i]...)
			n, err := r.unescape(b[i:])
			if err != nil {
				return err
			}
			i += n
			run = i
		case c < 0x20:
			return errSyntax
		case c < utf8.RuneSelf:
			i++
		default:
			n := runeLen(b, i)
			if n == 0 {
				bad, n = true, 1
			}
			i += n
		}
	}
}

// unescape decodes the escape sequence at the start of b into r.decoded and
// returns its length, exactly as encoding/json decodes it: an unpaired
// surrogate becomes U+FFFD.
func (r *rawRedactor) unescape(b []byte) (int, error) {
	if len(b) < 2 {
		return 0, errSyntax
	}
	switch c := b[1]; c {
	case '"', '\\', '/':
		r.decoded = append(r.decoded, c)
	case 'b':
		r.decoded = append(r.decoded, '\b')
	case 'f':
		r.decoded = append(r.decoded, '\f')
	case 'n':
		r.decoded = append(r.decoded, '\n')
	case 'r':
		r.decoded = append(r.decoded, '\r')
	case 't':
		r.decoded = append(r.decoded, '\t')
	case 'u':
		rn := u4(b)
		if rn < 0 {
			return 0, errSyntax
		}
		if utf16.IsSurrogate(rn) {
			if dec := utf16.DecodeRune(rn, u4(b[6:])); dec != utf8.RuneError {
				r.decoded = utf8.AppendRune(r.decoded, dec)
				return 12, nil
			}
			rn = utf8.RuneError
		}
		r.decoded = utf8.AppendRune(r.decoded, rn)
		return 6, nil
	default:
		return 0, errSyntax
	}
	return 2, nil
}

// search looks for patterns in the string token raw[open:close+1] and
// rewrites it if any is found. escaped says r.decoded holds the token's
// decoded text; bad says the token has invalid UTF-8.
func (r *rawRedactor) search(open, close int, escaped, bad bool) error {
	body := r.raw[open+1 : close]
	if !escaped && !bad {
		start, end := span(r.m, body, 0)
		if start < 0 {
			return nil
		}
		r.out = append(r.out, r.raw[r.last:open+1]...)
		last := 0
		for start >= 0 {
			r.out = append(append(r.out, body[last:start]...), storage.Redacted...)
			last = end
			start, end = span(r.m, body, end)
		}
		r.out = append(r.out, body[last:]...)
		r.last = close
		return nil
	}
	text := r.decoded
	if !escaped {
		text = body
	}
	if bad {
		text = validUTF8(text)
	}
	if start, _ := span(r.m, text, 0); start < 0 {
		return nil
	}
	r.out, _ = appendValidString(append(r.out, r.raw[r.last:open]...), r.m, text)
	r.last = close + 1
	return nil
}

// u4 decodes the escape \uXXXX at the start of b, or returns -1.
func u4(b []byte) rune {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return -1
	}
	var rn rune
	for _, h := range b[2:6] {
		d := unhex(h)
		if d < 0 {
			return -1
		}
		rn = rn<<4 | rune(d)
	}
	return rn
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}
