package ocisandbox_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/benchrun"
	"github.com/compatool/compatool/sandbox/sandboxtest"
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

// TestConcurrentNoLeaks runs 20 instances at once and checks that the
// Sandbox holds the same mounts, namespaces, cgroups and processes after as
// before. It counts only what belongs to this Sandbox: other packages'
// tests start and end sandboxes on the same host meanwhile.
func TestConcurrentNoLeaks(t *testing.T) {
	root := traversableDir(t)
	opts := &ocisandbox.Options{StateDir: filepath.Join(root, "state"), CacheDir: filepath.Join(root, "cache")}
	s := newSandbox(t, "runc", opts)
	owner := benchrun.Owner{HostID: s.HostID(), Dirs: []string{opts.StateDir, opts.CacheDir}}
	g := benchrun.NewGateway()
	defer g.Close()
	img := importProgram(t, s, benchrun.Program)
	// One run first, so that the Sandbox's parent cgroup exists before
	// counting.
	if _, err := benchrun.Run(t.Context(), s, g, "warm-up", img); err != nil {
		t.Fatal(err)
	}
	before := benchrun.CountOwned(owner)
	if want := (benchrun.Resources{Cgroups: before.Cgroups}); before != want || before.Cgroups == 0 {
		t.Fatalf("before the concurrent runs, the Sandbox holds %+v; want only its parent cgroup", before)
	}
	// A live run shows in the count, so that an unchanged count below
	// means something.
	gw := sandboxtest.NewGateway(t)
	const beat = "no-leaks-probe"
	inst, err := s.Start(t.Context(), gw.Spec("probe", importProgram(t, s, sandboxtest.Program{{Op: "heartbeat", Text: beat}})))
	if err != nil {
		t.Fatal(err)
	}
	awaitBeats(t, gw, beat, 1, inst)
	during := benchrun.CountOwned(owner)
	if err := inst.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if during.Mounts < 3 || during.NetNS != 1 || during.Processes < 2 || during.Cgroups <= before.Cgroups {
		t.Errorf("with one run live, counted %+v: want its writable layer, root filesystem and network namespace mounts, the runtime and the agent, and its cgroup", during)
	}
	if err := benchrun.Concurrent(t.Context(), s, g, img, 20); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, benchrun.CountOwned(owner)); diff != "" {
		t.Errorf("resources of the Sandbox after 20 concurrent runs (-before +after):\n%s", diff)
	}
	if live := s.Live(); len(live) != 0 {
		t.Errorf("Live() = %v after every run ended", live)
	}
}
