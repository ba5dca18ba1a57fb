package d1store_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
)

// lifecycleRequests is the D1 requests of one run's lifecycle: every
// method is one request, its statements batched.
const lifecycleRequests = 4

// TestRunLifecycleRoundTrips counts the requests a run's lifecycle sends:
// CreateSubmission, UpdateRun to running, UpdateRun to finished, GetRun.
func TestRunLifecycleRoundTrips(t *testing.T) {
	d := newD1(t, nil)
	before := d.emu.Requests()
	runLifecycle(t, d.s, "sub-1")
	if n := d.emu.Requests() - before; n != lifecycleRequests {
		t.Errorf("a run's lifecycle took %d D1 requests, want %d", n, lifecycleRequests)
	}
}

func runLifecycle(t testing.TB, s *d1store.Store, id storage.SubmissionID) {
	sub, runs := submission(id)
	runs = runs[:1]
	sub.Tasks = sub.Tasks[:1]
	if err := s.CreateSubmission(ctx, scope, sub, runs); err != nil {
		t.Fatal(err)
	}
	r := runs[0]
	r.State, r.StartedAt = storage.RunRunning, t0
	if err := s.UpdateRun(ctx, scope, r); err != nil {
		t.Fatal(err)
	}
	r.State, r.FinishedAt, r.Result = storage.RunFinished, t0, &storage.Result{Passed: true, Score: 1, ToolCalls: 2}
	if err := s.UpdateRun(ctx, scope, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRun(ctx, scope, r.ID)
	if err != nil || got.State != storage.RunFinished {
		t.Fatalf("GetRun = %+v, %v", got, err)
	}
}

// BenchmarkRunLifecycle reports the D1 requests and the time of one run's
// lifecycle against the emulator.
func BenchmarkRunLifecycle(b *testing.B) {
	d := newD1(b, nil)
	before, n := d.emu.Requests(), 0
	for b.Loop() {
		runLifecycle(b, d.s, storage.SubmissionID(fmt.Sprintf("sub-%d", n)))
		n++
	}
	b.ReportMetric(float64(d.emu.Requests()-before)/float64(n), "requests/run")
}

func TestMigrations(t *testing.T) {
	d := newD1(t, nil)
	opts := &d1store.Options{BaseURL: d.srv.URL + "/client/v4/", HTTPClient: d.srv.Client()}
	// A second store on the same database migrates nothing: it sends the
	// bootstrap and one read, no migration.
	before := d.emu.Requests()
	if _, err := d1store.Open(ctx, account, database, token, opts); err != nil {
		t.Fatal(err)
	}
	if n := d.emu.Requests() - before; n != 2 {
		t.Errorf("reopening a migrated database took %d requests, want 2", n)
	}
	// A database migrated by newer code is refused.
	if err := d.s.AppendAudit(ctx, storage.AuditRecord{ID: "a", At: t0, Staff: "s", Org: orgA, Operation: "support", Reason: "r", Action: "x"}); err != nil {
		t.Fatal(err)
	}
	raw := rawQuery(t, d, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (2, '0002_future.sql', 'x')`)
	if raw != 200 {
		t.Fatalf("inserting a future migration: HTTP %d", raw)
	}
	if _, err := d1store.Open(ctx, account, database, token, opts); !errors.Is(err, d1store.ErrSchemaTooNew) {
		t.Errorf("Open of a database at a newer schema: %v, want ErrSchemaTooNew", err)
	}
}
