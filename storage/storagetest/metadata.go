package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

var metadataTests = []test{
	{"TaskRoundTrip", testTaskRoundTrip},
	{"TaskValidation", testTaskValidation},
	{"SubmissionRoundTrip", testSubmissionRoundTrip},
	{"CreateSubmissionInvalid", testCreateSubmissionInvalid},
	{"CreateSubmissionConflicts", testCreateSubmissionConflicts},
	{"ZeroScope", testMetadataZeroScope},
	{"OrgIsolation", testMetadataOrgIsolation},
	{"StaffScope", testStaffScope},
	{"Paging", testPaging},
	{"PageLimits", testPageLimits},
	{"Erasure", testErasure},
	{"UpdateRun", testUpdateRun},
	{"RunsInState", testRunsInState},
	{"PublicRun", testPublicRun},
	{"RecordsAreCopies", testRecordsAreCopies},
	{"Audit", testAudit},
	{"AuditValidation", testAuditValidation},
	{"InvalidIDs", testInvalidIDs},
	{"Cancelled", testMetadataCancelled},
	{"ConcurrentWriters", testMetadataConcurrent},
}

func newSubmission(org auth.OrgID, id storage.SubmissionID, tasks ...storage.TaskID) storage.Submission {
	if len(tasks) == 0 {
		tasks = []storage.TaskID{"task-1", "task-2"}
	}
	return storage.Submission{
		ID:        id,
		Org:       org,
		Owner:     "user_" + string(org),
		AgentName: "agent of " + string(id),
		Image:     "registry.example/agent@sha256:" + strings.Repeat("ab", 32),
		Tasks:     tasks,
		CreatedAt: t0,
	}
}

// queuedRuns returns one queued run per task of sub, with id "<sub>.<task>".
func queuedRuns(sub storage.Submission) []storage.Run {
	runs := make([]storage.Run, len(sub.Tasks))
	for i, task := range sub.Tasks {
		runs[i] = storage.Run{
			ID:         storage.RunID(string(sub.ID) + "." + string(task)),
			Submission: sub.ID,
			Org:        sub.Org,
			Task:       task,
			State:      storage.RunQueued,
			CreatedAt:  t0.Add(time.Duration(i)),
		}
	}
	return runs
}

// create stores sub with its queued runs and returns the runs ordered by id.
func (e *env) create(t *testing.T, sub storage.Submission) []storage.Run {
	t.Helper()
	runs := queuedRuns(sub)
	must(t, e.m.CreateSubmission(background(), auth.InternalScope(sub.Org), sub, runs), "CreateSubmission(%s)", sub.ID)
	slices.SortFunc(runs, func(a, b storage.Run) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return runs
}

func (e *env) update(t *testing.T, r storage.Run) {
	t.Helper()
	must(t, e.m.UpdateRun(background(), auth.InternalScope(r.Org), r), "UpdateRun(%s)", r.ID)
}

// checkSubmission checks that sc reads want under want.ID.
func (e *env) checkSubmission(t *testing.T, sc auth.Scope, want storage.Submission) {
	t.Helper()
	got, err := e.m.GetSubmission(background(), sc, want.ID)
	if err != nil {
		t.Errorf("GetSubmission(%s): %v", want.ID, err)
		return
	}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("GetSubmission(%s) (-want +got):\n%s", want.ID, diff)
	}
}

// checkRun checks that sc reads want under want.ID.
func (e *env) checkRun(t *testing.T, sc auth.Scope, want storage.Run) {
	t.Helper()
	got, err := e.m.GetRun(background(), sc, want.ID)
	if err != nil {
		t.Errorf("GetRun(%s): %v", want.ID, err)
		return
	}
	if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
		t.Errorf("GetRun(%s) (-want +got):\n%s", want.ID, diff)
	}
}

func (e *env) checkNoSubmission(t *testing.T, sc auth.Scope, id storage.SubmissionID) {
	t.Helper()
	_, err := e.m.GetSubmission(background(), sc, id)
	wantErr(t, err, storage.ErrNotFound, "GetSubmission(%s) of a submission that must not exist", id)
}

func (e *env) checkNoRun(t *testing.T, sc auth.Scope, id storage.RunID) {
	t.Helper()
	_, err := e.m.GetRun(background(), sc, id)
	wantErr(t, err, storage.ErrNotFound, "GetRun(%s) of a run that must not exist", id)
}

func ids[T any, K ~string](recs []T, id func(T) K) []K {
	out := make([]K, len(recs))
	for i, r := range recs {
		out[i] = id(r)
	}
	return out
}

func subID(s storage.Submission) storage.SubmissionID { return s.ID }
func runID(r storage.Run) storage.RunID               { return r.ID }
func auditID(r storage.AuditRecord) string            { return r.ID }

func testTaskRoundTrip(t *testing.T, e *env) {
	ctx := background()
	got, err := e.m.ListTasks(ctx)
	must(t, err, "ListTasks of an empty store")
	if len(got) != 0 {
		t.Errorf("ListTasks of an empty store = %d tasks", len(got))
	}
	tasks := []storage.Task{
		{ID: "b", Environment: "flights", Month: "2026-03", Private: true, Sealed: []byte{1, 2, 3}, CreatedAt: t0},
		{ID: "B", Environment: "shop", Month: "2026-02", Published: []byte(`{"goal":"buy"}`), CreatedAt: t0},
		{ID: "a-1", Environment: "shop", Month: "2025-12", Private: true, Sealed: []byte{9}, Published: []byte("plain"), RetiredAt: base, CreatedAt: t0},
		{ID: "a", Environment: "shop", Month: "2026-03", CreatedAt: t0},
	}
	for _, task := range tasks {
		must(t, e.m.PutTask(ctx, task), "PutTask(%s)", task.ID)
	}
	for _, want := range tasks {
		got, err := e.m.GetTask(ctx, want.ID)
		must(t, err, "GetTask(%s)", want.ID)
		if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
			t.Errorf("GetTask(%s) (-want +got):\n%s", want.ID, diff)
		}
	}
	list, err := e.m.ListTasks(ctx)
	must(t, err, "ListTasks")
	want := []storage.Task{tasks[1], tasks[3], tasks[2], tasks[0]} // byte order: "B" < "a" < "a-1" < "b"
	if diff := cmp.Diff(want, list, cmpOpts); diff != "" {
		t.Errorf("ListTasks (-want +got):\n%s", diff)
	}

	// Replace, as retirement does.
	retired := tasks[0]
	retired.Published, retired.RetiredAt = []byte(`{"goal":"fly"}`), base.Add(time.Hour)
	must(t, e.m.PutTask(ctx, retired), "PutTask replacing %s", retired.ID)
	got1, err := e.m.GetTask(ctx, retired.ID)
	must(t, err, "GetTask(%s)", retired.ID)
	if diff := cmp.Diff(retired, got1, cmpOpts); diff != "" {
		t.Errorf("GetTask after replace (-want +got):\n%s", diff)
	}
	_, err = e.m.GetTask(ctx, "missing")
	wantErr(t, err, storage.ErrNotFound, "GetTask(missing)")
}

func testTaskValidation(t *testing.T, e *env) {
	ok := storage.Task{ID: "task-1", Environment: "shop", Month: "2026-03", Private: true, Sealed: []byte{1}, CreatedAt: t0}
	for _, c := range []struct {
		name   string
		change func(*storage.Task)
	}{
		{"empty id", func(t *storage.Task) { t.ID = "" }},
		{"id with slash", func(t *storage.Task) { t.ID = "a/b" }},
		{"no environment", func(t *storage.Task) { t.Environment = "" }},
		{"no month", func(t *storage.Task) { t.Month = "" }},
		{"month without zero", func(t *storage.Task) { t.Month = "2026-3" }},
		{"month 13", func(t *storage.Task) { t.Month = "2026-13" }},
		{"month as words", func(t *storage.Task) { t.Month = "March 2026" }},
		{"private plaintext before retirement", func(t *storage.Task) { t.Published = []byte("the goal") }},
	} {
		task := ok
		c.change(&task)
		wantErr(t, e.m.PutTask(background(), task), storage.ErrInvalid, "PutTask with %s", c.name)
	}
	list, err := e.m.ListTasks(background())
	must(t, err, "ListTasks")
	if len(list) != 0 {
		t.Errorf("invalid PutTask calls stored %d tasks", len(list))
	}
	long := ok
	long.ID = storage.TaskID(strings.Repeat("t", storage.MaxIDBytes))
	must(t, e.m.PutTask(background(), long), "PutTask with a %d-byte id", storage.MaxIDBytes)
}

func testSubmissionRoundTrip(t *testing.T, e *env) {
	ctx := background()
	sub := newSubmission(orgA, "sub-1", "task-2", "task-1") // Tasks keep their order
	runs := e.create(t, sub)
	e.checkSubmission(t, scopeA, newSubmission(orgA, "sub-1", "task-2", "task-1"))
	for _, r := range runs {
		e.checkRun(t, scopeA, r)
	}
	list, err := e.m.ListRuns(ctx, scopeA, sub.ID, storage.Page{})
	must(t, err, "ListRuns")
	if diff := cmp.Diff(runs, list, cmpOpts); diff != "" {
		t.Errorf("ListRuns (-want +got):\n%s", diff)
	}

	// A submission may be stored before its runs exist.
	empty := newSubmission(orgA, "sub-2")
	must(t, e.m.CreateSubmission(ctx, scopeA, empty, nil), "CreateSubmission without runs")
	e.checkSubmission(t, scopeA, empty)
	list, err = e.m.ListRuns(ctx, scopeA, empty.ID, storage.Page{})
	must(t, err, "ListRuns of a submission without runs")
	if len(list) != 0 {
		t.Errorf("ListRuns of a submission without runs = %v", ids(list, runID))
	}
	_, err = e.m.GetSubmission(ctx, scopeA, "missing")
	wantErr(t, err, storage.ErrNotFound, "GetSubmission(missing)")
	_, err = e.m.GetRun(ctx, scopeA, "missing")
	wantErr(t, err, storage.ErrNotFound, "GetRun(missing)")
	_, err = e.m.ListRuns(ctx, scopeA, "missing", storage.Page{})
	wantErr(t, err, storage.ErrNotFound, "ListRuns(missing)")
}

func testCreateSubmissionInvalid(t *testing.T, e *env) {
	for i, c := range []struct {
		name   string
		change func(*storage.Submission, []storage.Run)
	}{
		{"bad submission id", func(s *storage.Submission, runs []storage.Run) {
			s.ID = "sub/1"
			for i := range runs {
				runs[i].Submission = s.ID
			}
		}},
		{"org not the scope's", func(s *storage.Submission, runs []storage.Run) {
			s.Org = orgB
			for i := range runs {
				runs[i].Org = orgB
			}
		}},
		{"a run of another org", func(s *storage.Submission, runs []storage.Run) { runs[1].Org = orgB }},
		{"no owner", func(s *storage.Submission, runs []storage.Run) { s.Owner = "" }},
		{"no image", func(s *storage.Submission, runs []storage.Run) { s.Image = "" }},
		{"bad task id", func(s *storage.Submission, runs []storage.Run) { s.Tasks = append(s.Tasks, "task 3") }},
		{"bad run id", func(s *storage.Submission, runs []storage.Run) { runs[1].ID = "run 2" }},
		{"a run of another submission", func(s *storage.Submission, runs []storage.Run) { runs[1].Submission = "sub-other" }},
		{"a run of a task not submitted", func(s *storage.Submission, runs []storage.Run) { runs[1].Task = "task-9" }},
		{"a run not queued", func(s *storage.Submission, runs []storage.Run) { runs[1].State = storage.RunRunning }},
		{"a run with a result", func(s *storage.Submission, runs []storage.Run) { runs[1].Result = &storage.Result{Passed: true} }},
	} {
		sub := newSubmission(orgA, storage.SubmissionID(fmt.Sprintf("sub-%d", i)))
		runs := queuedRuns(sub)
		c.change(&sub, runs)
		err := e.m.CreateSubmission(background(), scopeA, sub, runs)
		wantErr(t, err, storage.ErrInvalid, "CreateSubmission with %s", c.name)
		for _, sc := range []auth.Scope{scopeA, scopeB} {
			e.checkNoSubmission(t, sc, storage.SubmissionID(fmt.Sprintf("sub-%d", i)))
			e.checkNoRun(t, sc, storage.RunID(fmt.Sprintf("sub-%d.task-1", i)))
		}
	}
	for _, sc := range []auth.Scope{scopeA, scopeB} {
		list, err := e.m.ListSubmissions(background(), sc, storage.Page{})
		must(t, err, "ListSubmissions")
		if len(list) != 0 {
			t.Errorf("invalid CreateSubmission calls stored %v", ids(list, subID))
		}
	}
}

func testCreateSubmissionConflicts(t *testing.T, e *env) {
	ctx := background()
	existing := newSubmission(orgA, "sub-1")
	runsA := e.create(t, existing)

	// The same id in the same org: nothing of the second is written.
	dup := newSubmission(orgA, "sub-1", "task-3")
	dup.AgentName = "another agent"
	wantErr(t, e.m.CreateSubmission(ctx, scopeA, dup, queuedRuns(dup)), storage.ErrAlreadyExists, "CreateSubmission of a taken id")
	e.checkSubmission(t, scopeA, existing)
	e.checkNoRun(t, scopeA, "sub-1.task-3")

	// The same id in another org.
	dupB := newSubmission(orgB, "sub-1", "task-3")
	wantErr(t, e.m.CreateSubmission(ctx, scopeB, dupB, queuedRuns(dupB)), storage.ErrAlreadyExists, "CreateSubmission of an id taken in another org")
	e.checkNoSubmission(t, scopeB, "sub-1")
	e.checkNoRun(t, scopeB, "sub-1.task-3")

	// A new submission with one run id taken (by another org): all or nothing.
	subB := newSubmission(orgB, "sub-2")
	runsB := queuedRuns(subB)
	runsB[1].ID = runsA[0].ID
	wantErr(t, e.m.CreateSubmission(ctx, scopeB, subB, runsB), storage.ErrAlreadyExists, "CreateSubmission with a taken run id")
	e.checkNoSubmission(t, scopeB, subB.ID)
	e.checkNoRun(t, scopeB, runsB[0].ID)
	e.checkNoRun(t, scopeB, runsA[0].ID)
	e.checkRun(t, scopeA, runsA[0])

	// The same run id twice in one call.
	subC := newSubmission(orgA, "sub-3")
	runsC := queuedRuns(subC)
	runsC[1].ID = runsC[0].ID
	wantErr(t, e.m.CreateSubmission(ctx, scopeA, subC, runsC), storage.ErrAlreadyExists, "CreateSubmission with a run id twice")
	e.checkNoSubmission(t, scopeA, subC.ID)
	e.checkNoRun(t, scopeA, runsC[0].ID)

	list, err := e.m.ListRuns(ctx, scopeA, existing.ID, storage.Page{})
	must(t, err, "ListRuns")
	if diff := cmp.Diff(runsA, list, cmpOpts); diff != "" {
		t.Errorf("runs of the first submission after conflicts (-want +got):\n%s", diff)
	}
}

func testMetadataZeroScope(t *testing.T, e *env) {
	ctx := background()
	var zero auth.Scope
	sub := newSubmission(orgA, "sub-1")
	runs := e.create(t, sub)
	fresh := newSubmission(orgA, "sub-2")
	moved := runs[0]
	moved.State = storage.RunRunning
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"CreateSubmission", func() error { return e.m.CreateSubmission(ctx, zero, fresh, queuedRuns(fresh)) }},
		{"GetSubmission", func() error { _, err := e.m.GetSubmission(ctx, zero, sub.ID); return err }},
		{"ListSubmissions", func() error { _, err := e.m.ListSubmissions(ctx, zero, storage.Page{}); return err }},
		{"SetPublic", func() error { return e.m.SetPublic(ctx, zero, sub.ID, true) }},
		{"DeleteSubmission", func() error { return e.m.DeleteSubmission(ctx, zero, sub.ID) }},
		{"GetRun", func() error { _, err := e.m.GetRun(ctx, zero, runs[0].ID); return err }},
		{"ListRuns", func() error { _, err := e.m.ListRuns(ctx, zero, sub.ID, storage.Page{}); return err }},
		{"UpdateRun", func() error { return e.m.UpdateRun(ctx, zero, moved) }},
		{"ListAudit", func() error { _, err := e.m.ListAudit(ctx, zero, storage.Page{}); return err }},
	} {
		wantErr(t, c.call(), storage.ErrInvalidScope, "%s with the zero scope", c.name)
	}
	e.checkSubmission(t, scopeA, sub)
	e.checkNoSubmission(t, scopeA, fresh.ID)
	e.checkRun(t, scopeA, runs[0])
}

func testMetadataOrgIsolation(t *testing.T, e *env) {
	ctx := background()
	subA := newSubmission(orgA, "sub-a")
	runsA := e.create(t, subA)
	subB := newSubmission(orgB, "sub-b")
	e.create(t, subB)

	// Every call by org B on org A's ids fails as on ids that never existed.
	const foreign, missing = "sub-a", "sub-z"
	run := func(sub string) storage.Run {
		r := runsA[0]
		r.ID, r.Submission = storage.RunID(sub+".task-1"), storage.SubmissionID(sub)
		r.State, r.StartedAt = storage.RunRunning, t0
		return r
	}
	for _, c := range []struct {
		name string
		call func(sub string) error
	}{
		{"GetSubmission", func(sub string) error {
			_, err := e.m.GetSubmission(ctx, scopeB, storage.SubmissionID(sub))
			return err
		}},
		{"SetPublic", func(sub string) error { return e.m.SetPublic(ctx, scopeB, storage.SubmissionID(sub), true) }},
		{"DeleteSubmission", func(sub string) error { return e.m.DeleteSubmission(ctx, scopeB, storage.SubmissionID(sub)) }},
		{"GetRun", func(sub string) error { _, err := e.m.GetRun(ctx, scopeB, run(sub).ID); return err }},
		{"ListRuns", func(sub string) error {
			_, err := e.m.ListRuns(ctx, scopeB, storage.SubmissionID(sub), storage.Page{})
			return err
		}},
		{"UpdateRun", func(sub string) error { return e.m.UpdateRun(ctx, scopeB, run(sub)) }},
		{"UpdateRun claiming the org", func(sub string) error {
			r := run(sub)
			r.Org = orgB
			return e.m.UpdateRun(ctx, scopeB, r)
		}},
	} {
		sameFailure(t, c.name, c.call(foreign), c.call(missing), foreign, missing)
	}

	e.checkSubmission(t, scopeA, subA)
	for _, r := range runsA {
		e.checkRun(t, scopeA, r)
	}
	_, err := e.m.PublicRun(ctx, runsA[0].ID)
	wantErr(t, err, storage.ErrNotFound, "PublicRun after org B's SetPublic on org A's submission")
	for _, c := range []struct {
		sc   auth.Scope
		want []storage.SubmissionID
	}{{scopeA, []storage.SubmissionID{"sub-a"}}, {scopeB, []storage.SubmissionID{"sub-b"}}} {
		list, err := e.m.ListSubmissions(ctx, c.sc, storage.Page{})
		must(t, err, "ListSubmissions(%s)", c.sc)
		if diff := cmp.Diff(c.want, ids(list, subID)); diff != "" {
			t.Errorf("ListSubmissions(%s) (-want +got):\n%s", c.sc, diff)
		}
	}
}

func testStaffScope(t *testing.T, e *env) {
	subA := newSubmission(orgA, "sub-a")
	runsA := e.create(t, subA)
	e.create(t, newSubmission(orgB, "sub-b"))
	staff, err := auth.StaffScope(&auth.Principal{Subject: "staff_1", Staff: true},
		auth.StaffRequest{Org: orgA, Operation: auth.OpSupport, Reason: "ticket 42"})
	must(t, err, "StaffScope")
	e.checkSubmission(t, staff, subA)
	e.checkRun(t, staff, runsA[0])
	e.checkNoSubmission(t, staff, "sub-b")
	list, err := e.m.ListSubmissions(background(), staff, storage.Page{})
	must(t, err, "ListSubmissions with a staff scope")
	if diff := cmp.Diff([]storage.SubmissionID{"sub-a"}, ids(list, subID)); diff != "" {
		t.Errorf("ListSubmissions with a staff scope for org A (-want +got):\n%s", diff)
	}
}

func testPaging(t *testing.T, e *env) {
	ctx := background()
	for _, id := range []storage.SubmissionID{"s-10", "s-02", "S-99", "s-01", "s_00", "s.5"} {
		must(t, e.m.CreateSubmission(ctx, scopeA, newSubmission(orgA, id), nil), "CreateSubmission(%s)", id)
	}
	for _, id := range []storage.SubmissionID{"s-03", "s-04"} {
		must(t, e.m.CreateSubmission(ctx, scopeB, newSubmission(orgB, id), nil), "CreateSubmission(%s)", id)
	}
	// Byte order: 'S' < 's', and '-' < '.' < '_'.
	for _, c := range []struct {
		page storage.Page
		want []storage.SubmissionID
	}{
		{storage.Page{}, []storage.SubmissionID{"S-99", "s-01", "s-02", "s-10", "s.5", "s_00"}},
		{storage.Page{Limit: 2}, []storage.SubmissionID{"S-99", "s-01"}},
		{storage.Page{After: "s-01", Limit: 2}, []storage.SubmissionID{"s-02", "s-10"}},
		{storage.Page{After: "s-10", Limit: 2}, []storage.SubmissionID{"s.5", "s_00"}},
		{storage.Page{After: "s_00", Limit: 2}, nil},
		{storage.Page{After: "s-05"}, []storage.SubmissionID{"s-10", "s.5", "s_00"}}, // After need not exist
		{storage.Page{After: "s-03"}, []storage.SubmissionID{"s-10", "s.5", "s_00"}}, // nor be the org's
		{storage.Page{After: "S"}, []storage.SubmissionID{"S-99", "s-01", "s-02", "s-10", "s.5", "s_00"}},
	} {
		list, err := e.m.ListSubmissions(ctx, scopeA, c.page)
		must(t, err, "ListSubmissions(%+v)", c.page)
		if diff := cmp.Diff(c.want, ids(list, subID), cmpOpts); diff != "" {
			t.Errorf("ListSubmissions(%+v) (-want +got):\n%s", c.page, diff)
		}
	}

	sub := newSubmission(orgA, "sub", "t-3", "T-1", "t-2", "t_0")
	runs := e.create(t, sub)
	var walked []storage.Run
	for p := (storage.Page{Limit: 1}); ; {
		page, err := e.m.ListRuns(ctx, scopeA, sub.ID, p)
		must(t, err, "ListRuns(%+v)", p)
		if len(page) == 0 {
			break
		}
		if len(page) > 1 || len(walked) > len(runs) {
			t.Fatalf("ListRuns(%+v) = %v; want at most one run and an end", p, ids(page, runID))
		}
		walked = append(walked, page...)
		p.After = string(page[0].ID)
	}
	if diff := cmp.Diff(runs, walked, cmpOpts); diff != "" {
		t.Errorf("runs walked one page at a time (-want +got):\n%s", diff)
	}
	if got, want := ids(runs, runID), []storage.RunID{"sub.T-1", "sub.t-2", "sub.t-3", "sub.t_0"}; !slices.Equal(got, want) {
		t.Errorf("run ids in byte order = %v, want %v", got, want)
	}
}

func testPageLimits(t *testing.T, e *env) {
	ctx := background()
	n := storage.MaxPageLimit + 1
	tasks := make([]storage.TaskID, n)
	for i := range tasks {
		tasks[i] = storage.TaskID(fmt.Sprintf("task-%04d", i))
	}
	big := newSubmission(orgA, "big", tasks...)
	e.create(t, big)
	for i := 1; i < n; i++ {
		sub := newSubmission(orgA, storage.SubmissionID(fmt.Sprintf("sub-%04d", i)))
		must(t, e.m.CreateSubmission(ctx, scopeA, sub, nil), "CreateSubmission(%s)", sub.ID)
	}
	for i := range n {
		r := auditRecord(orgA, fmt.Sprintf("audit-%04d", i), base.Add(time.Duration(i)*time.Second))
		must(t, e.m.AppendAudit(ctx, r), "AppendAudit(%s)", r.ID)
	}
	lists := []struct {
		name string
		list func(storage.Page) (int, error)
	}{
		{"ListSubmissions", func(p storage.Page) (int, error) { l, err := e.m.ListSubmissions(ctx, scopeA, p); return len(l), err }},
		{"ListRuns", func(p storage.Page) (int, error) { l, err := e.m.ListRuns(ctx, scopeA, big.ID, p); return len(l), err }},
		{"RunsInState", func(p storage.Page) (int, error) {
			l, err := e.m.RunsInState(ctx, storage.RunQueued, p)
			return len(l), err
		}},
		{"ListAudit", func(p storage.Page) (int, error) { l, err := e.m.ListAudit(ctx, scopeA, p); return len(l), err }},
	}
	for _, l := range lists {
		for _, c := range []struct{ limit, want int }{
			{0, storage.DefaultPageLimit},
			{-1, storage.DefaultPageLimit},
			{7, 7},
			{storage.MaxPageLimit, storage.MaxPageLimit},
			{storage.MaxPageLimit + 1, storage.MaxPageLimit},
			{1 << 30, storage.MaxPageLimit},
		} {
			got, err := l.list(storage.Page{Limit: c.limit})
			must(t, err, "%s(Limit %d)", l.name, c.limit)
			if got != c.want {
				t.Errorf("%s(Limit %d) of %d records = %d records, want %d", l.name, c.limit, n, got, c.want)
			}
		}
	}
}

func testErasure(t *testing.T, e *env) {
	ctx := background()
	x := newSubmission(orgA, "sub-x", "task-1", "task-2", "task-3")
	runsX := e.create(t, x)
	y := newSubmission(orgA, "sub-y")
	runsY := e.create(t, y)
	other := newSubmission(orgB, "sub-b")
	runsB := e.create(t, other)

	running := runsX[0]
	running.State, running.StartedAt = storage.RunRunning, t0
	e.update(t, running)
	finished := runsX[1]
	finished.State, finished.StartedAt, finished.FinishedAt = storage.RunFinished, t0, t0.Add(time.Minute)
	finished.Result = &storage.Result{Passed: true, Score: 1, Detail: "ok", ToolCalls: 3, AgentTime: time.Minute}
	e.update(t, finished)
	must(t, e.m.SetPublic(ctx, scopeA, x.ID, true), "SetPublic")
	audit := auditRecord(orgA, "audit-1", base)
	audit.Target = string(x.ID)
	must(t, e.m.AppendAudit(ctx, audit), "AppendAudit")

	must(t, e.m.DeleteSubmission(ctx, scopeA, x.ID), "DeleteSubmission")

	e.checkNoSubmission(t, scopeA, x.ID)
	for _, r := range runsX {
		e.checkNoRun(t, scopeA, r.ID)
		_, err := e.m.PublicRun(ctx, r.ID)
		wantErr(t, err, storage.ErrNotFound, "PublicRun(%s) of an erased run", r.ID)
	}
	for _, st := range []storage.RunState{storage.RunQueued, storage.RunRunning, storage.RunFinished} {
		list, err := e.m.RunsInState(ctx, st, storage.Page{Limit: storage.MaxPageLimit})
		must(t, err, "RunsInState(%s)", st)
		for _, r := range list {
			if r.Submission == x.ID {
				t.Errorf("RunsInState(%s) lists erased run %s", st, r.ID)
			}
		}
	}
	_, err := e.m.ListRuns(ctx, scopeA, x.ID, storage.Page{})
	wantErr(t, err, storage.ErrNotFound, "ListRuns of an erased submission")
	wantErr(t, e.m.UpdateRun(ctx, scopeA, running), storage.ErrNotFound, "UpdateRun of an erased run")
	e.checkNoRun(t, scopeA, running.ID)
	wantErr(t, e.m.SetPublic(ctx, scopeA, x.ID, false), storage.ErrNotFound, "SetPublic of an erased submission")
	wantErr(t, e.m.DeleteSubmission(ctx, scopeA, x.ID), storage.ErrNotFound, "a second DeleteSubmission")

	// Nothing else is touched, and the audit log survives erasure.
	e.checkSubmission(t, scopeA, y)
	for _, r := range runsY {
		e.checkRun(t, scopeA, r)
	}
	e.checkSubmission(t, scopeB, other)
	e.checkRun(t, scopeB, runsB[0])
	list, err := e.m.ListSubmissions(ctx, scopeA, storage.Page{})
	must(t, err, "ListSubmissions")
	if diff := cmp.Diff([]storage.SubmissionID{"sub-y"}, ids(list, subID)); diff != "" {
		t.Errorf("ListSubmissions after erasure (-want +got):\n%s", diff)
	}
	log, err := e.m.ListAudit(ctx, scopeA, storage.Page{})
	must(t, err, "ListAudit")
	if diff := cmp.Diff([]storage.AuditRecord{audit}, log, cmpOpts); diff != "" {
		t.Errorf("audit log after erasure (-want +got):\n%s", diff)
	}

	// The erased ids are free, and nothing of the old records comes back.
	again := newSubmission(orgA, "sub-x", "task-1")
	againRuns := e.create(t, again)
	e.checkSubmission(t, scopeA, again)
	e.checkRun(t, scopeA, againRuns[0])
	e.checkNoRun(t, scopeA, runsX[1].ID)
	_, err = e.m.PublicRun(ctx, againRuns[0].ID)
	wantErr(t, err, storage.ErrNotFound, "PublicRun of a re-created, private submission")
}

func testUpdateRun(t *testing.T, e *env) {
	ctx := background()
	sub := newSubmission(orgA, "sub-1")
	runs := e.create(t, sub)
	e.create(t, newSubmission(orgA, "sub-2"))

	r := runs[0]
	r.State, r.StartedAt = storage.RunRunning, t0.Add(time.Second)
	e.update(t, r)
	e.checkRun(t, scopeA, r)
	r.State, r.FinishedAt = storage.RunFinished, base.Add(90*time.Second)
	r.Result = &storage.Result{Passed: true, Score: 0.75, Detail: "3 of 4 checks", Exit: storage.Exit{Code: 0, Reason: "exited"},
		ToolCalls: 12, AgentTime: 1234567890 * time.Nanosecond}
	e.update(t, r)
	e.checkRun(t, scopeA, r)

	failed := runs[1]
	failed.State, failed.FinishedAt = storage.RunFailed, base
	failed.Result = &storage.Result{Failure: storage.FailureInfrastructure, Detail: "sandbox did not start",
		Exit: storage.Exit{Code: -1, TimedOut: true, Reason: "deadline"}}
	e.update(t, failed)
	e.checkRun(t, scopeA, failed)

	for _, c := range []struct {
		name   string
		change func(*storage.Run)
	}{
		{"Org", func(r *storage.Run) { r.Org = orgB }},
		{"Submission", func(r *storage.Run) { r.Submission = "sub-2" }},
		{"Task", func(r *storage.Run) { r.Task = "task-2" }},
		{"State to an unknown one", func(r *storage.Run) { r.State = "paused" }},
		{"State to empty", func(r *storage.Run) { r.State = "" }},
	} {
		changed := r
		changed.State = storage.RunCancelled
		c.change(&changed)
		wantErr(t, e.m.UpdateRun(ctx, scopeA, changed), storage.ErrInvalid, "UpdateRun changing %s", c.name)
		e.checkRun(t, scopeA, r)
	}

	missing := r
	missing.ID = "sub-1.task-9"
	wantErr(t, e.m.UpdateRun(ctx, scopeA, missing), storage.ErrNotFound, "UpdateRun of a missing run")
	e.checkNoRun(t, scopeA, missing.ID)
}

func testRunsInState(t *testing.T, e *env) {
	ctx := background()
	runsA := e.create(t, newSubmission(orgA, "sub-a", "t1", "t2", "t3"))
	runsB := e.create(t, newSubmission(orgB, "sub-b", "t1", "t2"))
	set := func(r *storage.Run, st storage.RunState) {
		r.State, r.StartedAt = st, t0
		e.update(t, *r)
	}
	set(&runsA[0], storage.RunRunning)
	set(&runsA[2], storage.RunRunning)
	set(&runsB[1], storage.RunRunning)
	set(&runsA[1], storage.RunCancelled)

	for _, c := range []struct {
		st   storage.RunState
		page storage.Page
		want []storage.Run
	}{
		{storage.RunRunning, storage.Page{}, []storage.Run{runsA[0], runsA[2], runsB[1]}},
		{storage.RunQueued, storage.Page{}, []storage.Run{runsB[0]}},
		{storage.RunCancelled, storage.Page{}, []storage.Run{runsA[1]}},
		{storage.RunFailed, storage.Page{}, nil},
		{storage.RunRunning, storage.Page{Limit: 2}, []storage.Run{runsA[0], runsA[2]}},
		{storage.RunRunning, storage.Page{After: string(runsA[2].ID)}, []storage.Run{runsB[1]}},
		{storage.RunRunning, storage.Page{After: string(runsA[0].ID), Limit: 1}, []storage.Run{runsA[2]}},
	} {
		got, err := e.m.RunsInState(ctx, c.st, c.page)
		must(t, err, "RunsInState(%s, %+v)", c.st, c.page)
		if diff := cmp.Diff(c.want, got, cmpOpts); diff != "" {
			t.Errorf("RunsInState(%s, %+v) (-want +got):\n%s", c.st, c.page, diff)
		}
	}
	_, err := e.m.RunsInState(ctx, "paused", storage.Page{})
	wantErr(t, err, storage.ErrInvalid, "RunsInState of an unknown state")
}

func testPublicRun(t *testing.T, e *env) {
	ctx := background()
	sub := newSubmission(orgA, "sub-a")
	runs := e.create(t, sub)
	runsB := e.create(t, newSubmission(orgB, "sub-b"))
	publicRun := func(id storage.RunID) (storage.Run, error) { return e.m.PublicRun(ctx, id) }

	_, err := publicRun(runs[0].ID)
	wantErr(t, err, storage.ErrNotFound, "PublicRun of a new (private) submission")
	must(t, e.m.SetPublic(ctx, scopeA, sub.ID, true), "SetPublic(true)")
	sub.Public = true
	e.checkSubmission(t, scopeA, sub)
	r := runs[0]
	r.State, r.StartedAt, r.FinishedAt = storage.RunFinished, t0, t0.Add(time.Second)
	r.Result = &storage.Result{Passed: true, Score: 1}
	e.update(t, r)
	for _, want := range []storage.Run{r, runs[1]} {
		got, err := publicRun(want.ID)
		must(t, err, "PublicRun(%s) of a public submission", want.ID)
		if diff := cmp.Diff(want, got, cmpOpts); diff != "" {
			t.Errorf("PublicRun(%s) (-want +got):\n%s", want.ID, diff)
		}
	}
	_, err = publicRun(runsB[0].ID)
	wantErr(t, err, storage.ErrNotFound, "PublicRun of another, private submission")
	_, err = publicRun("missing")
	wantErr(t, err, storage.ErrNotFound, "PublicRun(missing)")

	must(t, e.m.SetPublic(ctx, scopeA, sub.ID, false), "SetPublic(false)")
	_, err = publicRun(r.ID)
	wantErr(t, err, storage.ErrNotFound, "PublicRun after SetPublic(false)")
	wantErr(t, e.m.SetPublic(ctx, scopeA, "missing", true), storage.ErrNotFound, "SetPublic(missing)")
}

func testRecordsAreCopies(t *testing.T, e *env) {
	ctx := background()
	newTask := func() storage.Task {
		return storage.Task{ID: "task-1", Environment: "shop", Month: "2026-03", Private: true, Sealed: []byte{1, 2, 3}}
	}
	task := newTask()
	must(t, e.m.PutTask(ctx, task), "PutTask")
	task.Sealed[0] = 9
	got, err := e.m.GetTask(ctx, "task-1")
	must(t, err, "GetTask")
	got.Sealed[0] = 8
	list, err := e.m.ListTasks(ctx)
	must(t, err, "ListTasks")
	list[0].Sealed[0] = 7
	got, err = e.m.GetTask(ctx, "task-1")
	must(t, err, "GetTask")
	if diff := cmp.Diff(newTask(), got, cmpOpts); diff != "" {
		t.Errorf("task after changing the caller's copies (-want +got):\n%s", diff)
	}

	sub := newSubmission(orgA, "sub-1")
	runs := queuedRuns(sub)
	must(t, e.m.CreateSubmission(ctx, scopeA, sub, runs), "CreateSubmission")
	sub.Tasks[0] = "changed"
	runs[0].State = storage.RunFailed
	gotSub, err := e.m.GetSubmission(ctx, scopeA, sub.ID)
	must(t, err, "GetSubmission")
	gotSub.Tasks[0] = "changed"
	subs, err := e.m.ListSubmissions(ctx, scopeA, storage.Page{})
	must(t, err, "ListSubmissions")
	subs[0].Tasks[0] = "changed"
	e.checkSubmission(t, scopeA, newSubmission(orgA, "sub-1"))

	must(t, e.m.SetPublic(ctx, scopeA, sub.ID, true), "SetPublic")
	r := queuedRuns(newSubmission(orgA, "sub-1"))[0]
	r.State = storage.RunFinished
	r.Result = &storage.Result{Score: 0.5}
	e.update(t, r)
	r.Result.Score = 1
	for _, get := range []func() (storage.Run, error){
		func() (storage.Run, error) { return e.m.GetRun(ctx, scopeA, r.ID) },
		func() (storage.Run, error) { return e.m.PublicRun(ctx, r.ID) },
		func() (storage.Run, error) {
			l, err := e.m.ListRuns(ctx, scopeA, sub.ID, storage.Page{Limit: 1})
			if err != nil || len(l) == 0 {
				return storage.Run{}, fmt.Errorf("ListRuns: %d runs, %v", len(l), err)
			}
			return l[0], nil
		},
		func() (storage.Run, error) {
			l, err := e.m.RunsInState(ctx, storage.RunFinished, storage.Page{})
			if err != nil || len(l) == 0 {
				return storage.Run{}, fmt.Errorf("RunsInState: %d runs, %v", len(l), err)
			}
			return l[0], nil
		},
	} {
		got, err := get()
		must(t, err, "reading run")
		if got.Result != nil {
			got.Result.Score = 2
		}
	}
	want := queuedRuns(newSubmission(orgA, "sub-1"))[0]
	want.State = storage.RunFinished
	want.Result = &storage.Result{Score: 0.5}
	e.checkRun(t, scopeA, want)
	e.checkRun(t, scopeA, queuedRuns(newSubmission(orgA, "sub-1"))[1])
}

func auditRecord(org auth.OrgID, id string, at time.Time) storage.AuditRecord {
	return storage.AuditRecord{ID: id, At: at, Staff: "staff_1", Org: org, Operation: auth.OpSupport,
		Reason: "ticket 42", Action: "results", Target: "sub-1"}
}

func testAudit(t *testing.T, e *env) {
	ctx := background()
	// Out of order, with ties, fractions and two zones: listed by instant,
	// then id.
	a3 := auditRecord(orgA, "audit-3", base.Add(2*time.Second))
	a2 := auditRecord(orgA, "audit-2", base.In(cet))
	a1 := auditRecord(orgA, "audit-1", base)
	a0 := auditRecord(orgA, "audit-0", base.Add(500*time.Millisecond))
	a4 := auditRecord(orgA, "audit-4", base.Add(time.Second).In(cet))
	a4.Operation = auth.OpInfrastructure
	b := auditRecord(orgB, "audit-b", base)
	for _, r := range []storage.AuditRecord{a3, a2, b, a1, a0, a4} {
		must(t, e.m.AppendAudit(ctx, r), "AppendAudit(%s)", r.ID)
	}
	for _, c := range []struct {
		sc   auth.Scope
		page storage.Page
		want []storage.AuditRecord
	}{
		{scopeA, storage.Page{}, []storage.AuditRecord{a1, a2, a0, a4, a3}},
		{scopeB, storage.Page{}, []storage.AuditRecord{b}},
		{scopeA, storage.Page{Limit: 2}, []storage.AuditRecord{a1, a2}},
		{scopeA, storage.Page{After: "audit-2", Limit: 2}, []storage.AuditRecord{a0, a4}},
		{scopeA, storage.Page{After: "audit-4"}, []storage.AuditRecord{a3}},
		{scopeA, storage.Page{After: "audit-3"}, nil},
		{scopeA, storage.Page{After: "audit-9"}, nil},
		{scopeA, storage.Page{After: "audit-b"}, nil}, // another org's record is no record
	} {
		got, err := e.m.ListAudit(ctx, c.sc, c.page)
		must(t, err, "ListAudit(%s, %+v)", c.sc, c.page)
		if diff := cmp.Diff(c.want, got, cmpOpts); diff != "" {
			t.Errorf("ListAudit(%s, %+v) (-want +got):\n%s", c.sc, c.page, diff)
		}
	}

	// Records cannot be replaced, not even from another org.
	changed := a1
	changed.Reason = "rewritten"
	wantErr(t, e.m.AppendAudit(ctx, changed), storage.ErrAlreadyExists, "AppendAudit of a used id")
	moved := auditRecord(orgB, "audit-1", base)
	wantErr(t, e.m.AppendAudit(ctx, moved), storage.ErrAlreadyExists, "AppendAudit of an id used in another org")
	for sc, want := range map[auth.Scope][]string{scopeA: {"audit-1", "audit-2", "audit-0", "audit-4", "audit-3"}, scopeB: {"audit-b"}} {
		got, err := e.m.ListAudit(ctx, sc, storage.Page{})
		must(t, err, "ListAudit")
		if diff := cmp.Diff(want, ids(got, auditID)); diff != "" {
			t.Errorf("ListAudit(%s) after refused appends (-want +got):\n%s", sc, diff)
		}
		if len(got) > 0 && got[0].Reason != a1.Reason {
			t.Errorf("audit record %s was rewritten: reason %q", got[0].ID, got[0].Reason)
		}
	}
}

func testAuditValidation(t *testing.T, e *env) {
	for _, c := range []struct {
		name   string
		change func(*storage.AuditRecord)
	}{
		{"no id", func(r *storage.AuditRecord) { r.ID = "" }},
		{"bad id", func(r *storage.AuditRecord) { r.ID = "a/b" }},
		{"no time", func(r *storage.AuditRecord) { r.At = time.Time{} }},
		{"no org", func(r *storage.AuditRecord) { r.Org = "" }},
		{"no staff", func(r *storage.AuditRecord) { r.Staff = "" }},
		{"no operation", func(r *storage.AuditRecord) { r.Operation = "" }},
		{"unknown operation", func(r *storage.AuditRecord) { r.Operation = "curiosity" }},
		{"no reason", func(r *storage.AuditRecord) { r.Reason = "" }},
		{"no action", func(r *storage.AuditRecord) { r.Action = "" }},
	} {
		r := auditRecord(orgA, "audit-1", base)
		c.change(&r)
		wantErr(t, e.m.AppendAudit(background(), r), storage.ErrInvalid, "AppendAudit with %s", c.name)
	}
	got, err := e.m.ListAudit(background(), scopeA, storage.Page{})
	must(t, err, "ListAudit")
	if len(got) != 0 {
		t.Errorf("invalid appends stored %v", ids(got, auditID))
	}
}

// badIDs fail storage.ValidID.
var badIDs = []string{"", "a/b", "../etc", "a b", "a\x00", "ü", "a%2F", strings.Repeat("a", storage.MaxIDBytes+1)}

func testInvalidIDs(t *testing.T, e *env) {
	ctx := background()
	for _, id := range badIDs {
		r := storage.Run{ID: storage.RunID(id), Submission: "sub-1", Org: orgA, Task: "task-1", State: storage.RunRunning}
		for _, c := range []struct {
			name string
			call func() error
		}{
			{"PutTask", func() error {
				return e.m.PutTask(ctx, storage.Task{ID: storage.TaskID(id), Environment: "shop", Month: "2026-03"})
			}},
			{"GetTask", func() error { _, err := e.m.GetTask(ctx, storage.TaskID(id)); return err }},
			{"GetSubmission", func() error { _, err := e.m.GetSubmission(ctx, scopeA, storage.SubmissionID(id)); return err }},
			{"SetPublic", func() error { return e.m.SetPublic(ctx, scopeA, storage.SubmissionID(id), true) }},
			{"DeleteSubmission", func() error { return e.m.DeleteSubmission(ctx, scopeA, storage.SubmissionID(id)) }},
			{"GetRun", func() error { _, err := e.m.GetRun(ctx, scopeA, storage.RunID(id)); return err }},
			{"ListRuns", func() error {
				_, err := e.m.ListRuns(ctx, scopeA, storage.SubmissionID(id), storage.Page{})
				return err
			}},
			{"UpdateRun", func() error { return e.m.UpdateRun(ctx, scopeA, r) }},
			{"PublicRun", func() error { _, err := e.m.PublicRun(ctx, storage.RunID(id)); return err }},
		} {
			wantErr(t, c.call(), storage.ErrInvalid, "%s(%q)", c.name, id)
		}
	}
	// The longest valid ids work.
	long := storage.SubmissionID(strings.Repeat("s", storage.MaxIDBytes-len(".task-1")))
	runs := e.create(t, newSubmission(orgA, long, "task-1"))
	if len(runs[0].ID) != storage.MaxIDBytes {
		t.Fatalf("test bug: run id of %d bytes", len(runs[0].ID))
	}
	e.checkRun(t, scopeA, runs[0])
}

func testMetadataCancelled(t *testing.T, e *env) {
	bg := background()
	sub := newSubmission(orgA, "sub-1")
	runs := e.create(t, sub)
	task := storage.Task{ID: "task-1", Environment: "shop", Month: "2026-03"}
	must(t, e.m.PutTask(bg, task), "PutTask")
	audit := auditRecord(orgA, "audit-1", base)
	must(t, e.m.AppendAudit(bg, audit), "AppendAudit")

	ctx := cancelled()
	changedTask := task
	changedTask.Environment = "other"
	fresh := newSubmission(orgA, "sub-2")
	moved := runs[0]
	moved.State = storage.RunRunning
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"PutTask (new)", func() error {
			return e.m.PutTask(ctx, storage.Task{ID: "task-2", Environment: "shop", Month: "2026-03"})
		}},
		{"PutTask (replace)", func() error { return e.m.PutTask(ctx, changedTask) }},
		{"GetTask", func() error { _, err := e.m.GetTask(ctx, task.ID); return err }},
		{"ListTasks", func() error { _, err := e.m.ListTasks(ctx); return err }},
		{"CreateSubmission", func() error { return e.m.CreateSubmission(ctx, scopeA, fresh, queuedRuns(fresh)) }},
		{"GetSubmission", func() error { _, err := e.m.GetSubmission(ctx, scopeA, sub.ID); return err }},
		{"ListSubmissions", func() error { _, err := e.m.ListSubmissions(ctx, scopeA, storage.Page{}); return err }},
		{"SetPublic", func() error { return e.m.SetPublic(ctx, scopeA, sub.ID, true) }},
		{"DeleteSubmission", func() error { return e.m.DeleteSubmission(ctx, scopeA, sub.ID) }},
		{"GetRun", func() error { _, err := e.m.GetRun(ctx, scopeA, runs[0].ID); return err }},
		{"ListRuns", func() error { _, err := e.m.ListRuns(ctx, scopeA, sub.ID, storage.Page{}); return err }},
		{"UpdateRun", func() error { return e.m.UpdateRun(ctx, scopeA, moved) }},
		{"RunsInState", func() error { _, err := e.m.RunsInState(ctx, storage.RunQueued, storage.Page{}); return err }},
		{"PublicRun", func() error { _, err := e.m.PublicRun(ctx, runs[0].ID); return err }},
		{"AppendAudit", func() error { return e.m.AppendAudit(ctx, auditRecord(orgA, "audit-2", base)) }},
		{"ListAudit", func() error { _, err := e.m.ListAudit(ctx, scopeA, storage.Page{}); return err }},
	} {
		wantErr(t, c.call(), context.Canceled, "%s with a cancelled ctx", c.name)
	}

	_, err := e.m.GetTask(bg, "task-2")
	wantErr(t, err, storage.ErrNotFound, "GetTask of a task put with a cancelled ctx")
	gotTask, err := e.m.GetTask(bg, task.ID)
	must(t, err, "GetTask")
	if diff := cmp.Diff(task, gotTask, cmpOpts); diff != "" {
		t.Errorf("task after a cancelled replace (-want +got):\n%s", diff)
	}
	e.checkNoSubmission(t, scopeA, fresh.ID)
	e.checkSubmission(t, scopeA, sub) // neither public nor deleted
	e.checkRun(t, scopeA, runs[0])
	log, err := e.m.ListAudit(bg, scopeA, storage.Page{})
	must(t, err, "ListAudit")
	if diff := cmp.Diff([]storage.AuditRecord{audit}, log, cmpOpts); diff != "" {
		t.Errorf("audit log after a cancelled append (-want +got):\n%s", diff)
	}
}

func testMetadataConcurrent(t *testing.T, e *env) {
	ctx := background()
	const n = 32
	var wg sync.WaitGroup

	// Distinct ids.
	for i := range n {
		wg.Go(func() {
			sub := newSubmission(orgA, storage.SubmissionID(fmt.Sprintf("sub-%02d", i)))
			if err := e.m.CreateSubmission(ctx, scopeA, sub, queuedRuns(sub)); err != nil {
				t.Errorf("concurrent CreateSubmission(%s): %v", sub.ID, err)
			}
		})
	}
	wg.Wait()
	list, err := e.m.ListSubmissions(ctx, scopeA, storage.Page{})
	must(t, err, "ListSubmissions")
	if len(list) != n {
		t.Errorf("after %d concurrent creates ListSubmissions has %d", n, len(list))
	}

	// One id: exactly one create wins, and its runs are whole.
	var won atomic.Int32
	for i := range n {
		wg.Go(func() {
			sub := newSubmission(orgB, "same")
			sub.AgentName = fmt.Sprint("agent ", i)
			err := e.m.CreateSubmission(ctx, scopeB, sub, queuedRuns(sub))
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, storage.ErrAlreadyExists):
				t.Errorf("concurrent CreateSubmission of one id: %v, want nil or ErrAlreadyExists", err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Errorf("%d of %d concurrent creates of one id succeeded, want 1", won.Load(), n)
	}
	runs, err := e.m.ListRuns(ctx, scopeB, "same", storage.Page{})
	must(t, err, "ListRuns")
	if diff := cmp.Diff([]storage.RunID{"same.task-1", "same.task-2"}, ids(runs, runID)); diff != "" {
		t.Errorf("runs of the winning create (-want +got):\n%s", diff)
	}

	// One run updated by many writers while readers read it.
	target := queuedRuns(newSubmission(orgA, "sub-00"))[0]
	for i := range n {
		wg.Go(func() {
			r := target
			r.State = storage.RunFinished
			r.Result = &storage.Result{ToolCalls: i + 1}
			if err := e.m.UpdateRun(ctx, scopeA, r); err != nil {
				t.Errorf("concurrent UpdateRun: %v", err)
			}
		})
		wg.Go(func() {
			got, err := e.m.GetRun(ctx, scopeA, target.ID)
			if err != nil {
				t.Errorf("GetRun during updates: %v", err)
			} else if (got.State == storage.RunQueued) != (got.Result == nil) {
				t.Errorf("GetRun during updates read a torn run: state %s, result %+v", got.State, got.Result)
			}
		})
		wg.Go(func() {
			r := auditRecord(orgA, fmt.Sprintf("audit-%02d", i), base.Add(time.Duration(i)))
			if err := e.m.AppendAudit(ctx, r); err != nil {
				t.Errorf("concurrent AppendAudit: %v", err)
			}
		})
	}
	wg.Wait()
	got, err := e.m.GetRun(ctx, scopeA, target.ID)
	must(t, err, "GetRun")
	if got.State != storage.RunFinished || got.Result == nil || got.Result.ToolCalls < 1 || got.Result.ToolCalls > n {
		t.Errorf("run after concurrent updates = %+v, want one writer's update", got)
	}
	log, err := e.m.ListAudit(ctx, scopeA, storage.Page{})
	must(t, err, "ListAudit")
	if len(log) != n {
		t.Errorf("after %d concurrent appends ListAudit has %d", n, len(log))
	}
}
