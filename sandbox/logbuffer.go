package sandbox

import (
	"slices"
	"sync"
)

// LogBuffer keeps the first Limits.LogBytes bytes written to it and counts
// the rest as truncated; writes never fail, so an agent writing without end
// is never blocked by its log. Drivers use one per stream to implement
// [Instance.Logs]. It is safe for concurrent use.
type LogBuffer struct {
	mu        sync.Mutex
	limit     int
	buf       []byte
	truncated bool
}

// NewLogBuffer returns a buffer that keeps at most limit bytes.
func NewLogBuffer(limit int) *LogBuffer { return &LogBuffer{limit: limit} }

// Write keeps what fits and reports all of p written.
func (b *LogBuffer) Write(p []byte) (int, error) {
	n := len(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.limit - len(b.buf); n > room {
		b.truncated = true
		p = p[:max(room, 0)]
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// Snapshot returns a copy of what was kept and whether anything was not.
func (b *LogBuffer) Snapshot() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.buf), b.truncated
}

// String returns what was kept.
func (b *LogBuffer) String() string {
	out, _ := b.Snapshot()
	return string(out)
}
