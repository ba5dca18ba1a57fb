package sandbox

import "testing"

func TestLogBuffer(t *testing.T) {
	for _, c := range []struct {
		limit     int
		writes    []string
		want      string
		truncated bool
	}{
		{10, []string{"abc", "def"}, "abcdef", false},
		{4, []string{"abc", "def"}, "abcd", true},
		{4, []string{"abcd", "e", "fgh"}, "abcd", true},
		{0, []string{"x"}, "", true},
		{3, []string{"", "abc"}, "abc", false},
	} {
		b := NewLogBuffer(c.limit)
		for _, w := range c.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Errorf("Write(%q) = %d, %v; want %d, nil: a full log must not block the agent", w, n, err, len(w))
			}
		}
		got, truncated := b.Snapshot()
		if string(got) != c.want || truncated != c.truncated || b.String() != c.want {
			t.Errorf("limit %d, writes %q: kept %q (truncated %t), want %q (%t)", c.limit, c.writes, got, truncated, c.want, c.truncated)
		}
	}
}
