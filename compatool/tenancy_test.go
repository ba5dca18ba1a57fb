package compatool_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/storage"
)

// TestCrossOrg: org B, whatever its role, cannot read, list, publish, cancel
// or erase org A's data through any Harness method, and org A's data is
// unchanged afterwards.
func TestCrossOrg(t *testing.T) {
	f := newFixture(t, 2, nil)
	sub := f.submit("org_a", imgScripted, f.tasks)
	runs := f.wait("org_a", sub.ID)
	run := runs[0].ID
	ctx := context.Background()
	_, before := f.transcript("org_a", run)

	methods := []struct {
		name string
		call func(auth.Scope) (any, error)
	}{
		{"Submission", func(s auth.Scope) (any, error) { return f.h.Submission(ctx, s, sub.ID) }},
		{"Submissions", func(s auth.Scope) (any, error) { return f.h.Submissions(ctx, s, storage.Page{}) }},
		{"Runs", func(s auth.Scope) (any, error) { return f.h.Runs(ctx, s, sub.ID, storage.Page{}) }},
		{"Run", func(s auth.Scope) (any, error) { return f.h.Run(ctx, s, run) }},
		{"Transcript", func(s auth.Scope) (any, error) {
			rc, _, err := f.h.Transcript(ctx, s, run)
			if rc != nil {
				rc.Close()
			}
			return nil, err
		}},
		{"Wait", func(s auth.Scope) (any, error) { return f.h.Wait(ctx, s, sub.ID) }},
		{"Audit", func(s auth.Scope) (any, error) { return f.h.Audit(ctx, s, storage.Page{}) }},
		{"Publish", func(s auth.Scope) (any, error) { return nil, f.h.Publish(ctx, s, sub.ID) }},
		{"Unpublish", func(s auth.Scope) (any, error) { return nil, f.h.Unpublish(ctx, s, sub.ID) }},
		{"Cancel", func(s auth.Scope) (any, error) { return nil, f.h.Cancel(ctx, s, sub.ID) }},
		{"Erase", func(s auth.Scope) (any, error) { return nil, f.h.Erase(ctx, s, sub.ID) }},
	}
	for _, role := range []string{"org:admin", "org:member"} {
		scope, err := auth.ScopeFor(f.principal("org_b", role, false))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range methods {
			t.Run(role+"/"+m.name, func(t *testing.T) {
				got, err := m.call(scope)
				switch m.name {
				case "Submissions", "Audit": // listings of org B's own data: empty
					if err != nil || !isEmpty(got) {
						t.Errorf("%s = %v, %v; want an empty listing", m.name, got, err)
					}
				default:
					if !errors.Is(err, storage.ErrNotFound) {
						t.Errorf("%s error = %v, want storage.ErrNotFound", m.name, err)
					}
				}
			})
		}
	}
	// Org A's data is untouched: still there, still private, same bytes.
	got, err := f.h.Submission(ctx, f.scope("org_a"), sub.ID)
	if err != nil || got.Public {
		t.Fatalf("org A's submission after org B's attempts: %+v, %v", got, err)
	}
	if _, after := f.transcript("org_a", run); string(after) != string(before) {
		t.Error("org A's transcript changed")
	}
	if _, _, err := f.h.PublicTranscript(ctx, run); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("PublicTranscript of a private run: %v, want ErrNotFound", err)
	}
	// The zero scope opens nothing.
	for _, m := range methods {
		if _, err := m.call(auth.Scope{}); !errors.Is(err, storage.ErrInvalidScope) {
			t.Errorf("%s with the zero scope: %v, want ErrInvalidScope", m.name, err)
		}
	}
}

func isEmpty(v any) bool {
	switch v := v.(type) {
	case []storage.Submission:
		return len(v) == 0
	case []storage.AuditRecord:
		return len(v) == 0
	}
	return false
}

// TestStaffAccess: every staff read leaves exactly one audit record saying
// who, which org, which operation, why and when, written before the data is
// returned; staff cannot write; no reason, no access.
func TestStaffAccess(t *testing.T) {
	f := newFixture(t, 1, nil)
	sub := f.submit("org_a", imgScripted, f.tasks)
	runs := f.wait("org_a", sub.ID)
	ctx := context.Background()
	staff := f.principal("org_ops", "org:member", true)
	if _, err := auth.StaffScope(staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport}); !errors.Is(err, auth.ErrForbidden) {
		t.Fatalf("staff scope without a reason: %v, want ErrForbidden", err)
	}
	if _, err := auth.StaffScope(f.principal("org_a", "org:admin", false), auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "x"}); !errors.Is(err, auth.ErrForbidden) {
		t.Fatalf("staff scope for an org admin: %v, want ErrForbidden", err)
	}
	scope, err := auth.StaffScope(staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "ticket 4711: customer asks why run failed"})
	if err != nil {
		t.Fatal(err)
	}
	reads := []struct {
		action, target string
		read           func() error
	}{
		{"submission", string(sub.ID), func() error { _, err := f.h.Submission(ctx, scope, sub.ID); return err }},
		{"results", string(sub.ID), func() error { _, err := f.h.Runs(ctx, scope, sub.ID, storage.Page{}); return err }},
		{"result", string(runs[0].ID), func() error { _, err := f.h.Run(ctx, scope, runs[0].ID); return err }},
		{"transcript", string(runs[0].ID), func() error {
			rc, _, err := f.h.Transcript(ctx, scope, runs[0].ID)
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
			}
			return err
		}},
		{"submissions", "", func() error { _, err := f.h.Submissions(ctx, scope, storage.Page{}); return err }},
	}
	for i, r := range reads {
		if err := r.read(); err != nil {
			t.Fatalf("staff %s: %v", r.action, err)
		}
		recs, err := f.store.ListAudit(ctx, auth.InternalScope("org_a"), storage.Page{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != i+1 {
			t.Fatalf("after %d staff reads, %d audit records", i+1, len(recs))
		}
		got := recs[i]
		if got.ID == "" || got.At.IsZero() {
			t.Errorf("audit record without id or time: %+v", got)
		}
		got.ID, got.At = "", got.At.Truncate(0).UTC()
		want := storage.AuditRecord{Staff: staff.Subject, Org: "org_a", Operation: auth.OpSupport, Reason: "ticket 4711: customer asks why run failed", Action: r.action, Target: r.target, At: got.At}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("audit record of %s (-want +got):\n%s", r.action, diff)
		}
	}
	// The organisation can see who read its data.
	recs, err := f.h.Audit(ctx, f.scope("org_a"), storage.Page{})
	if err != nil || len(recs) != len(reads) {
		t.Fatalf("org A's audit view: %d records, %v", len(recs), err)
	}
	// Staff cannot act on the org's behalf.
	for name, write := range map[string]func() error{
		"Publish": func() error { return f.h.Publish(ctx, scope, sub.ID) },
		"Erase":   func() error { return f.h.Erase(ctx, scope, sub.ID) },
		"Cancel":  func() error { return f.h.Cancel(ctx, scope, sub.ID) },
	} {
		if err := write(); !errors.Is(err, auth.ErrForbidden) {
			t.Errorf("staff %s: %v, want ErrForbidden", name, err)
		}
	}
	// If the audit record cannot be written, no data is read.
	f.store.FailNext("AppendAudit", errors.New("disk full"))
	if _, err := f.h.Run(ctx, scope, runs[0].ID); err == nil {
		t.Error("staff read succeeded although its audit record was not written")
	}
}

// TestBadInput: bad input gets a clear error and changes nothing.
func TestBadInput(t *testing.T) {
	f := newFixture(t, 2, func(o *compatool.Options) { o.RequireDigest = true; o.MaxGoalBytes = 1000 })
	ctx := context.Background()
	p := f.principal("org_a", "org:admin", false)
	digest := "registry.example/agent@sha256:" + string(make64('a'))
	if _, err := f.h.Submit(ctx, p, compatool.Submission{ID: "sub-1", AgentName: "a", Image: digest, Tasks: f.tasks[:1]}); err != nil {
		t.Fatal(err)
	}
	f.wait("org_a", "sub-1")
	old := compatool.TaskSpec{ID: "old", Environment: "notes", Month: "2026-10", Private: true, Content: compatool.TaskContent{Goal: "an old goal", Config: []byte(`{"want":[]}`)}}
	if err := f.h.PutTask(ctx, old); err != nil {
		t.Fatal(err)
	}
	subs := []struct {
		name string
		sub  compatool.Submission
	}{
		{"duplicate id", compatool.Submission{ID: "sub-1", AgentName: "a", Image: digest, Tasks: f.tasks[:1]}},
		{"bad id", compatool.Submission{ID: "../x", AgentName: "a", Image: digest, Tasks: f.tasks[:1]}},
		{"no agent name", compatool.Submission{Image: digest, Tasks: f.tasks[:1]}},
		{"control chars in name", compatool.Submission{AgentName: "a\x1b[2J", Image: digest, Tasks: f.tasks[:1]}},
		{"not digest-pinned", compatool.Submission{AgentName: "a", Image: "registry.example/agent:latest", Tasks: f.tasks[:1]}},
		{"short digest", compatool.Submission{AgentName: "a", Image: "agent@sha256:abc", Tasks: f.tasks[:1]}},
		{"no tasks", compatool.Submission{AgentName: "a", Image: digest}},
		{"unknown task", compatool.Submission{AgentName: "a", Image: digest, Tasks: []storage.TaskID{"nope"}}},
		{"duplicate task", compatool.Submission{AgentName: "a", Image: digest, Tasks: []storage.TaskID{f.tasks[0], f.tasks[0]}}},
		{"task outside its month", compatool.Submission{AgentName: "a", Image: digest, Tasks: []storage.TaskID{"old"}}},
	}
	for _, c := range subs {
		if _, err := f.h.Submit(ctx, p, c.sub); err == nil {
			t.Errorf("%s: accepted", c.name)
		} else if c.name != "duplicate id" && !errors.Is(err, compatool.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		} else if c.name == "duplicate id" && !errors.Is(err, storage.ErrAlreadyExists) {
			t.Errorf("%s: %v, want ErrAlreadyExists", c.name, err)
		}
	}
	if _, err := f.h.Submit(ctx, &auth.Principal{Subject: "u"}, compatool.Submission{AgentName: "a", Image: digest, Tasks: f.tasks[:1]}); !errors.Is(err, auth.ErrForbidden) {
		t.Errorf("submit without an org: %v, want ErrForbidden", err)
	}
	tasks := []struct {
		name string
		spec compatool.TaskSpec
	}{
		{"empty goal", compatool.TaskSpec{ID: "t1", Environment: "notes", Month: "2026-11", Content: compatool.TaskContent{Goal: "  "}}},
		{"oversized goal", compatool.TaskSpec{ID: "t1", Environment: "notes", Month: "2026-11", Content: compatool.TaskContent{Goal: string(make([]byte, 1001))}}},
		{"bad month", compatool.TaskSpec{ID: "t1", Environment: "notes", Month: "2026-13", Content: compatool.TaskContent{Goal: "g"}}},
		{"unknown environment", compatool.TaskSpec{ID: "t1", Environment: "nope", Month: "2026-11", Content: compatool.TaskContent{Goal: "g"}}},
		{"bad config", compatool.TaskSpec{ID: "t1", Environment: "notes", Month: "2026-11", Content: compatool.TaskContent{Goal: "g", Config: []byte("{")}}},
		{"bad id", compatool.TaskSpec{ID: "a b", Environment: "notes", Month: "2026-11", Content: compatool.TaskContent{Goal: "g"}}},
	}
	for _, c := range tasks {
		if err := f.h.PutTask(ctx, c.spec); !errors.Is(err, compatool.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		}
	}
	// Nothing changed: one submission, the tasks as they were.
	got, err := f.h.Submissions(ctx, f.scope("org_a"), storage.Page{})
	if err != nil || len(got) != 1 {
		t.Errorf("submissions after bad input: %d, %v; want 1", len(got), err)
	}
	all, err := f.store.ListTasks(ctx)
	if err != nil || len(all) != 3 {
		t.Errorf("tasks after bad input: %d, %v; want 3", len(all), err)
	}
}

func make64(c byte) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return b
}
