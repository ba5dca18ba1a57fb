package redact

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"
	"unicode/utf8"
)

func TestRuneLen(t *testing.T) {
	edges := []byte{0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xF4, 0xFF}
	for c0 := range 256 {
		for c1 := range 256 {
			for _, c2 := range edges {
				for _, c3 := range edges {
					for n := 1; n <= 4; n++ {
						b := []byte{byte(c0), byte(c1), c2, c3}[:n]
						want := 0
						if r, size := utf8.DecodeRune(b); r != utf8.RuneError || size != 1 {
							want = size
						}
						if got := runeLen(b, 0); got != want {
							t.Fatalf("runeLen(% x) = %d, want %d", b, got, want)
						}
						if got := runeLen(string(b), 0); got != want {
							t.Fatalf("runeLen(%q) = %d, want %d", b, got, want)
						}
					}
				}
			}
		}
	}
}

// TestWordTests holds the eight-byte tests to byte-by-byte ones.
func TestWordTests(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	interesting := []byte{0x00, 0x1F, 0x20, 0x21, '"', 0x23, '\\', 0x5B, 0x5D, 0x7F, 0x80, 0xFF}
	for range 200000 {
		var b [8]byte
		for i := range b {
			if r.IntN(3) == 0 {
				b[i] = interesting[r.IntN(len(interesting))]
			} else {
				b[i] = byte(0x20 + r.IntN(0x5F))
			}
		}
		first := 8 // index of the first byte that needs a look
		for i, c := range b {
			if c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
				first = i
				break
			}
		}
		m := special(binary.LittleEndian.Uint64(b[:]))
		if got := bits.TrailingZeros64(m) / 8; got != first {
			t.Fatalf("special(% x) points at byte %d, want %d", b, got, first)
		}
		if load8(b[:], 0) != binary.LittleEndian.Uint64(b[:]) || load8(string(b[:]), 0) != binary.LittleEndian.Uint64(b[:]) {
			t.Fatalf("load8(% x) is not little-endian", b)
		}
	}
}
