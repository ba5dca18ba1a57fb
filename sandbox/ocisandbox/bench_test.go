package ocisandbox_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox/ocisandbox/internal/benchrun"
	"github.com/google/go-cmp/cmp"
)

// BenchmarkStart measures sandbox start → the agent's first MCP request
// (reported as first-req-p50/p90) and whole runs (ns/op) with runc.
func BenchmarkStart(b *testing.B) {
	s := newSandbox(b, "runc", nil)
	g := benchrun.NewGateway()
	defer g.Close()
	img := importProgram(b, s, benchrun.Program)
	var firsts []time.Duration
	for i := 0; b.Loop(); i++ {
		tm, err := benchrun.Run(context.Background(), s, g, fmt.Sprintf("bench-%d", i), img)
		if err != nil {
			b.Fatal(err)
		}
		firsts = append(firsts, tm.FirstRequest)
	}
	b.ReportMetric(float64(benchrun.Percentile(firsts, 50).Microseconds())/1000, "first-req-p50-ms")
	b.ReportMetric(float64(benchrun.Percentile(firsts, 90).Microseconds())/1000, "first-req-p90-ms")
}

// TestConcurrentNoLeaks runs 20 instances at once and checks that the host
// has the same mounts, namespaces, cgroups and runtime processes after as
// before.
func TestConcurrentNoLeaks(t *testing.T) {
	s := newSandbox(t, "runc", nil)
	g := benchrun.NewGateway()
	defer g.Close()
	img := importProgram(t, s, benchrun.Program)
	// One run first, so that the Sandbox's parent cgroup exists before
	// counting.
	if _, err := benchrun.Run(t.Context(), s, g, "warm-up", img); err != nil {
		t.Fatal(err)
	}
	before := benchrun.Count(s.Runtime())
	if err := benchrun.Concurrent(t.Context(), s, g, img, 20); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, benchrun.Count(s.Runtime())); diff != "" {
		t.Errorf("host resources after 20 concurrent runs (-before +after):\n%s", diff)
	}
}
