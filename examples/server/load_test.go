package main

import (
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/examples/server/app"
)

// loadFlags select the backends of TestLoad: the in-memory sandbox, whose
// agents take milliseconds, so that the figures are the server's own.
var loadFlags = []string{"-sandbox=mem", "-workers=8"}

// TestLoad submits 100 submissions of 5 tasks each through the real server
// binary on a loopback port, from 10 concurrent clients, and waits for all
// 500 runs. It checks that every run reaches a final state and logs runs per
// second and the p50 and p99 latency of the API requests; it asserts no
// timing.
func TestLoad(t *testing.T) {
	const clients, perClient = 10, 10
	s := startServer(t, t.TempDir(), nil, loadFlags...)
	tok := s.token("org_load", false)
	first := s.upload(tok, "load 0", false)

	type timing struct {
		what string
		d    time.Duration
	}
	var (
		mu      sync.Mutex
		timings []timing
		subs    = []string{first.ID}
	)
	timed := func(what string, f func() response) response {
		start := time.Now()
		r := f()
		mu.Lock()
		timings = append(timings, timing{what, time.Since(start)})
		mu.Unlock()
		return r
	}

	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range perClient {
				if c == 0 && i == 0 {
					continue // the first submission uploaded the image
				}
				r := timed("POST /v1/submissions", func() response { return s.submitByID(tok, "load", first.Image) })
				sub := decode[app.Submission](t, r, http.StatusCreated)
				timed("GET /v1/submissions/{id}", func() response { return s.get("/v1/submissions/"+sub.ID, tok) })
				timed("GET /v1/runs?submission=", func() response { return s.get("/v1/runs?submission="+sub.ID, tok) })
				mu.Lock()
				subs = append(subs, sub.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	submitted := time.Since(start)

	runs := 0
	for _, sub := range subs {
		for _, r := range s.wait(tok, sub) {
			runs++
			if r.State != "finished" || r.Result == nil || !r.Result.Passed {
				t.Errorf("run %s: %s %+v", r.ID, r.State, r.Result)
			}
		}
	}
	elapsed := time.Since(start)
	if want := clients * perClient * 5; runs != want {
		t.Errorf("%d runs ended, want %d", runs, want)
	}

	byWhat := map[string][]time.Duration{}
	var all []time.Duration
	for _, tm := range timings {
		byWhat[tm.what] = append(byWhat[tm.what], tm.d)
		all = append(all, tm.d)
	}
	t.Logf("%d submissions × 5 tasks: %d runs in %v (submitted in %v): %.0f runs/s", len(subs), runs, elapsed.Round(time.Millisecond), submitted.Round(time.Millisecond), float64(runs)/elapsed.Seconds())
	for _, what := range append(slices.Sorted(maps.Keys(byWhat)), "all API requests") {
		ds := byWhat[what]
		if what == "all API requests" {
			ds = all
		}
		t.Logf("%-28s n=%4d p50=%v p99=%v", what, len(ds), percentile(ds, 50), percentile(ds, 99))
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	return s[min(len(s)-1, len(s)*p/100)].Round(10 * time.Microsecond)
}
