package compatool_test

import (
	"context"
	"testing"
	"time"

	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
)

// BenchmarkHarnessOverhead measures what the harness adds to a run in
// memory — queue, task unsealing, gateway and token, sandbox start and
// destruction, grading, redaction, stores, meter — with an agent that exits
// at once. It reports the overhead per run (wall time minus the agent's
// time) in ms/run.
func BenchmarkHarnessOverhead(b *testing.B) {
	f := newFixture(b, 1, func(o *compatool.Options) { o.Workers = 1 })
	f.sb.Register("noop", func(context.Context, *memsandbox.Env) int { return 0 })
	ctx := context.Background()
	p := f.principal("org_a", "org:admin", false)
	scope := f.scope("org_a")
	var agent time.Duration
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		sub, err := f.h.Submit(ctx, p, compatool.Submission{AgentName: "noop", Image: "noop", Tasks: f.tasks})
		if err != nil {
			b.Fatal(err)
		}
		runs, err := f.h.Wait(ctx, scope, sub.ID)
		if err != nil {
			b.Fatal(err)
		}
		if runs[0].State != storage.RunFinished {
			b.Fatalf("run %s: %+v", runs[0].State, runs[0].Result)
		}
		agent += runs[0].Result.AgentTime
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(elapsed-agent)/float64(b.N)/1e6, "overhead-ms/run")
}
