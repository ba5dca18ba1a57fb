package app

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimiterKeys bounds the limiter's memory: beyond it, keys idle long
// enough to have refilled their bucket are forgotten (a new bucket is
// equivalent), and if none is, an arbitrary one.
const maxLimiterKeys = 10000

// limiter is a token bucket per key (an organisation, or a client address
// for unauthenticated endpoints). It is safe for concurrent use.
type limiter struct {
	limit rate.Limit
	burst int
	idle  time.Duration // time for an empty bucket to refill

	mu   sync.Mutex
	keys map[string]*bucket
}

type bucket struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiter(perSecond float64, burst int) *limiter {
	return &limiter{
		limit: rate.Limit(perSecond),
		burst: burst,
		idle:  time.Duration(float64(burst) / perSecond * float64(time.Second)),
		keys:  map[string]*bucket{},
	}
}

// allow takes one token from key's bucket. When none is left it returns
// false and how long until one is.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.keys[key]
	if b == nil {
		if len(l.keys) >= maxLimiterKeys {
			l.evict(now)
		}
		b = &bucket{l: rate.NewLimiter(l.limit, l.burst)}
		l.keys[key] = b
	}
	b.seen = now
	r := b.l.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// evict forgets refilled buckets, or one bucket if none is; l.mu is held.
func (l *limiter) evict(now time.Time) {
	for k, b := range l.keys {
		if now.Sub(b.seen) > l.idle {
			delete(l.keys, k)
		}
	}
	for k := range l.keys {
		if len(l.keys) < maxLimiterKeys {
			break
		}
		delete(l.keys, k)
	}
}
