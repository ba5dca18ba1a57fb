package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

var transcriptTests = []test{
	{"RoundTrip", testTranscriptRoundTrip},
	{"Invalid", testTranscriptInvalid},
	{"ZeroScope", testTranscriptZeroScope},
	{"OrgIsolation", testTranscriptOrgIsolation},
	{"Delete", testTranscriptDelete},
	{"ArchiveRestore", testArchiveRestore},
	{"StoredBefore", testStoredBefore},
	{"StoredBeforeLimits", testStoredBeforeLimits},
	{"Large", testLargeTranscript},
	{"ReaderSurvivesReplace", testReaderSurvivesReplace},
	{"ConcurrentWriters", testTranscriptConcurrent},
	{"Cancelled", testTranscriptCancelled},
	{"CancelledMidWrite", testCancelledMidWrite},
}

func docOf(t *testing.T, rt storage.RedactedTranscript) []byte {
	t.Helper()
	b, err := io.ReadAll(rt.Open())
	must(t, err, "reading a redacted transcript")
	return b
}

func (e *env) put(t *testing.T, sc auth.Scope, rt storage.RedactedTranscript) {
	t.Helper()
	must(t, e.ts.Put(background(), sc, rt), "Put(%s)", rt.RunID())
}

// get reads a whole transcript.
func (e *env) get(t *testing.T, sc auth.Scope, run storage.RunID) ([]byte, storage.TranscriptInfo, error) {
	t.Helper()
	rc, info, err := e.ts.Get(background(), sc, run)
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, info, err
}

// checkTranscript checks that sc reads doc and info for run.
func (e *env) checkTranscript(t *testing.T, sc auth.Scope, run storage.RunID, doc []byte, info storage.TranscriptInfo) {
	t.Helper()
	got, gotInfo, err := e.get(t, sc, run)
	if err != nil {
		t.Errorf("Get(%s): %v", run, err)
		return
	}
	if !bytes.Equal(got, doc) {
		t.Errorf("Get(%s) read %d bytes that are not the %d stored", run, len(got), len(doc))
	}
	if diff := cmp.Diff(info, gotInfo); diff != "" {
		t.Errorf("Get(%s) info (-want +got):\n%s", run, diff)
	}
}

func (e *env) checkNoTranscript(t *testing.T, sc auth.Scope, run storage.RunID) {
	t.Helper()
	_, _, err := e.get(t, sc, run)
	wantErr(t, err, storage.ErrNotFound, "Get(%s) of a transcript that must not exist", run)
}

// info is what Get must report for rt stored at the env's current time.
func (e *env) info(rt storage.RedactedTranscript, archived bool) storage.TranscriptInfo {
	return storage.TranscriptInfo{
		Run:        storage.RunID(rt.RunID()),
		Submission: storage.SubmissionID(rt.SubmissionID()),
		Org:        auth.OrgID(rt.Org()),
		Size:       rt.Size(),
		StoredAt:   e.now,
		Archived:   archived,
	}
}

func (e *env) storedBefore(t *testing.T, before time.Time, p storage.Page) []storage.RunID {
	t.Helper()
	list, err := e.ts.StoredBefore(background(), before, p)
	must(t, err, "StoredBefore(%v, %+v)", before, p)
	out := make([]storage.RunID, len(list))
	for i, info := range list {
		out[i] = info.Run
	}
	return out
}

func testTranscriptRoundTrip(t *testing.T, e *env) {
	rt := redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "first"))
	doc := docOf(t, rt)
	e.checkNoTranscript(t, scopeA, "run-1")
	e.put(t, scopeA, rt)
	e.checkTranscript(t, scopeA, "run-1", doc, e.info(rt, false))

	// A replacement is a new transcript, stamped anew.
	e.setNow(base.Add(time.Hour + 250*time.Millisecond))
	rt2 := redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "second, longer than the first"))
	e.put(t, scopeA, rt2)
	e.checkTranscript(t, scopeA, "run-1", docOf(t, rt2), e.info(rt2, false))
}

func testTranscriptInvalid(t *testing.T, e *env) {
	ctx := background()
	wantErr(t, e.ts.Put(ctx, scopeA, storage.RedactedTranscript{}), storage.ErrInvalid, "Put of the zero RedactedTranscript")

	ofB := redactTranscript(t, newTranscript(orgB, "sub-1", "run-1", "x"))
	wantErr(t, e.ts.Put(ctx, scopeA, ofB), storage.ErrInvalid, "Put of org B's transcript under org A's scope")
	e.checkNoTranscript(t, scopeA, "run-1")
	e.checkNoTranscript(t, scopeB, "run-1")

	for _, id := range badIDs {
		if id == "" {
			continue // redact refuses an empty run id itself
		}
		rt := redactTranscript(t, newTranscript(orgA, "sub-1", storage.RunID(id), "x"))
		wantErr(t, e.ts.Put(ctx, scopeA, rt), storage.ErrInvalid, "Put with run id %q", id)
		rt = redactTranscript(t, newTranscript(orgA, storage.SubmissionID(id), "run-2", "x"))
		wantErr(t, e.ts.Put(ctx, scopeA, rt), storage.ErrInvalid, "Put with submission id %q", id)
		_, _, err := e.ts.Get(ctx, scopeA, storage.RunID(id))
		wantErr(t, err, storage.ErrInvalid, "Get(%q)", id)
		wantErr(t, e.ts.Delete(ctx, scopeA, storage.RunID(id)), storage.ErrInvalid, "Delete(%q)", id)
		wantErr(t, e.ts.Archive(ctx, scopeA, storage.RunID(id)), storage.ErrInvalid, "Archive(%q)", id)
		wantErr(t, e.ts.Restore(ctx, scopeA, storage.RunID(id)), storage.ErrInvalid, "Restore(%q)", id)
	}
	e.checkNoTranscript(t, scopeA, "run-2")
	if got := e.storedBefore(t, base.Add(time.Hour), storage.Page{}); len(got) != 0 {
		t.Errorf("refused Puts stored %v", got)
	}
}

func testTranscriptZeroScope(t *testing.T, e *env) {
	ctx := background()
	var zero auth.Scope
	rt := redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "x"))
	e.put(t, scopeA, rt)
	other := redactTranscript(t, newTranscript(orgA, "sub-1", "run-2", "x"))
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Put", func() error { return e.ts.Put(ctx, zero, other) }},
		{"Get", func() error { _, _, err := e.ts.Get(ctx, zero, "run-1"); return err }},
		{"Delete", func() error { return e.ts.Delete(ctx, zero, "run-1") }},
		{"Archive", func() error { return e.ts.Archive(ctx, zero, "run-1") }},
		{"Restore", func() error { return e.ts.Restore(ctx, zero, "run-1") }},
	} {
		wantErr(t, c.call(), storage.ErrInvalidScope, "%s with the zero scope", c.name)
	}
	e.checkTranscript(t, scopeA, "run-1", docOf(t, rt), e.info(rt, false))
	e.checkNoTranscript(t, scopeA, "run-2")
}

func testTranscriptOrgIsolation(t *testing.T, e *env) {
	ctx := background()
	rt := redactTranscript(t, newTranscript(orgA, "sub-1", "run-a", "A's"))
	doc := docOf(t, rt)
	e.put(t, scopeA, rt)
	info := e.info(rt, false)

	const foreign, missing = "run-a", "run-z"
	for _, c := range []struct {
		name string
		call func(run storage.RunID) error
	}{
		{"Get", func(run storage.RunID) error { _, _, err := e.ts.Get(ctx, scopeB, run); return err }},
		{"Archive", func(run storage.RunID) error { return e.ts.Archive(ctx, scopeB, run) }},
		{"Restore", func(run storage.RunID) error { return e.ts.Restore(ctx, scopeB, run) }},
	} {
		sameFailure(t, c.name, c.call(foreign), c.call(missing), foreign, missing)
	}
	// Delete of a missing transcript succeeds, so it does on another org's.
	must(t, e.ts.Delete(ctx, scopeB, foreign), "Delete of another org's transcript")
	e.checkTranscript(t, scopeA, foreign, doc, info)

	// Org A's archived transcript stays archived whatever org B does.
	must(t, e.ts.Archive(ctx, scopeA, foreign), "Archive")
	wantErr(t, e.ts.Restore(ctx, scopeB, foreign), storage.ErrNotFound, "Restore of another org's transcript")
	info.Archived = true
	e.checkTranscript(t, scopeA, foreign, doc, info)
	must(t, e.ts.Restore(ctx, scopeA, foreign), "Restore")
	info.Archived = false

	// A Put under org B's scope of the same run id never reaches A's.
	e.setNow(base.Add(time.Minute))
	ofB := redactTranscript(t, newTranscript(orgB, "sub-9", foreign, "B's"))
	if err := e.ts.Put(ctx, scopeB, ofB); err == nil {
		e.checkTranscript(t, scopeB, foreign, docOf(t, ofB), e.info(ofB, false))
	}
	e.checkTranscript(t, scopeA, foreign, doc, info)
}

func testTranscriptDelete(t *testing.T, e *env) {
	ctx := background()
	must(t, e.ts.Delete(ctx, scopeA, "run-1"), "Delete of a missing transcript")
	for _, run := range []storage.RunID{"run-1", "run-2", "run-3"} {
		e.put(t, scopeA, redactTranscript(t, newTranscript(orgA, "sub-1", run, "x")))
	}
	must(t, e.ts.Archive(ctx, scopeA, "run-2"), "Archive")
	for _, run := range []storage.RunID{"run-1", "run-2"} { // live and archived
		must(t, e.ts.Delete(ctx, scopeA, run), "Delete(%s)", run)
		e.checkNoTranscript(t, scopeA, run)
		must(t, e.ts.Delete(ctx, scopeA, run), "second Delete(%s)", run)
		wantErr(t, e.ts.Archive(ctx, scopeA, run), storage.ErrNotFound, "Archive of a deleted transcript")
		wantErr(t, e.ts.Restore(ctx, scopeA, run), storage.ErrNotFound, "Restore of a deleted transcript")
	}
	if diff := cmp.Diff([]storage.RunID{"run-3"}, e.storedBefore(t, base.Add(time.Hour), storage.Page{})); diff != "" {
		t.Errorf("StoredBefore after deletes (-want +got):\n%s", diff)
	}
}

func testArchiveRestore(t *testing.T, e *env) {
	ctx := background()
	later := base.Add(time.Hour)
	rt := redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "x"))
	doc := docOf(t, rt)
	e.put(t, scopeA, rt)
	e.put(t, scopeA, redactTranscript(t, newTranscript(orgA, "sub-1", "run-2", "y")))
	info := e.info(rt, true)
	e.setNow(base.Add(time.Minute)) // Archive and Restore keep StoredAt

	for range 2 { // idempotent
		must(t, e.ts.Archive(ctx, scopeA, "run-1"), "Archive")
		e.checkTranscript(t, scopeA, "run-1", doc, info)
		if diff := cmp.Diff([]storage.RunID{"run-2"}, e.storedBefore(t, later, storage.Page{})); diff != "" {
			t.Errorf("StoredBefore lists archived transcripts (-want +got):\n%s", diff)
		}
	}
	info.Archived = false
	for range 2 {
		must(t, e.ts.Restore(ctx, scopeA, "run-1"), "Restore")
		e.checkTranscript(t, scopeA, "run-1", doc, info)
		if diff := cmp.Diff([]storage.RunID{"run-1", "run-2"}, e.storedBefore(t, later, storage.Page{})); diff != "" {
			t.Errorf("StoredBefore after Restore (-want +got):\n%s", diff)
		}
	}
	wantErr(t, e.ts.Archive(ctx, scopeA, "run-9"), storage.ErrNotFound, "Archive(missing)")
	wantErr(t, e.ts.Restore(ctx, scopeA, "run-9"), storage.ErrNotFound, "Restore(missing)")

	// A Put over an archived transcript stores one live transcript.
	must(t, e.ts.Archive(ctx, scopeA, "run-1"), "Archive")
	rt2 := redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "replacement"))
	e.put(t, scopeA, rt2)
	e.checkTranscript(t, scopeA, "run-1", docOf(t, rt2), e.info(rt2, false))
	if diff := cmp.Diff([]storage.RunID{"run-1", "run-2"}, e.storedBefore(t, later, storage.Page{})); diff != "" {
		t.Errorf("StoredBefore after a Put over an archived transcript (-want +got):\n%s", diff)
	}
	must(t, e.ts.Delete(ctx, scopeA, "run-1"), "Delete")
	e.checkNoTranscript(t, scopeA, "run-1") // no archived copy is left behind
}

func testStoredBefore(t *testing.T, e *env) {
	// Stored at a whole second, half a second later, and a second later, by
	// two orgs, not in id order.
	for _, p := range []struct {
		at  time.Time
		org auth.OrgID
		run storage.RunID
	}{
		{base, orgB, "run-3"},
		{base, orgA, "run-1"},
		{base.Add(500 * time.Millisecond).In(cet), orgA, "run-2"},
		{base.Add(time.Second), orgB, "run-0"},
		{base.Add(time.Second), orgA, "run-4"},
	} {
		e.setNow(p.at)
		e.put(t, auth.InternalScope(p.org), redactTranscript(t, newTranscript(p.org, "sub-1", p.run, "x")))
	}
	must(t, e.ts.Archive(background(), scopeA, "run-4"), "Archive")
	for _, c := range []struct {
		before time.Time
		page   storage.Page
		want   []storage.RunID
	}{
		{base, storage.Page{}, nil},
		{base.Add(time.Nanosecond), storage.Page{}, []storage.RunID{"run-1", "run-3"}},
		{base.Add(500 * time.Millisecond), storage.Page{}, []storage.RunID{"run-1", "run-3"}},
		{base.Add(500*time.Millisecond + 1), storage.Page{}, []storage.RunID{"run-1", "run-2", "run-3"}},
		{base.Add(time.Hour).In(cet), storage.Page{}, []storage.RunID{"run-0", "run-1", "run-2", "run-3"}},
		{base.Add(time.Hour), storage.Page{Limit: 2}, []storage.RunID{"run-0", "run-1"}},
		{base.Add(time.Hour), storage.Page{After: "run-1", Limit: 2}, []storage.RunID{"run-2", "run-3"}},
		{base.Add(time.Hour), storage.Page{After: "run-3"}, nil},
		{base.Add(time.Hour), storage.Page{After: "run-15"}, []storage.RunID{"run-2", "run-3"}},
	} {
		if diff := cmp.Diff(c.want, e.storedBefore(t, c.before, c.page), cmpOpts); diff != "" {
			t.Errorf("StoredBefore(%v, %+v) (-want +got):\n%s", c.before, c.page, diff)
		}
	}
	list, err := e.ts.StoredBefore(background(), base.Add(time.Nanosecond), storage.Page{Limit: 1})
	must(t, err, "StoredBefore")
	want := []storage.TranscriptInfo{{Run: "run-1", Submission: "sub-1", Org: orgA, StoredAt: base}}
	if diff := cmp.Diff(want, list, cmpOpts, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Size" }, cmp.Ignore())); diff != "" {
		t.Errorf("StoredBefore info (-want +got):\n%s", diff)
	}
	if len(list) == 1 && list[0].Size <= 0 {
		t.Errorf("StoredBefore info has size %d", list[0].Size)
	}
}

func testStoredBeforeLimits(t *testing.T, e *env) {
	n := storage.MaxPageLimit + 1
	for i := range n {
		e.put(t, scopeA, redactTranscript(t, newTranscript(orgA, "sub-1", storage.RunID(fmt.Sprintf("run-%04d", i)), "x")))
	}
	for _, c := range []struct{ limit, want int }{
		{0, storage.DefaultPageLimit},
		{-1, storage.DefaultPageLimit},
		{7, 7},
		{storage.MaxPageLimit + 1, storage.MaxPageLimit},
	} {
		if got := len(e.storedBefore(t, base.Add(time.Hour), storage.Page{Limit: c.limit})); got != c.want {
			t.Errorf("StoredBefore(Limit %d) of %d transcripts = %d, want %d", c.limit, n, got, c.want)
		}
	}
}

// largeSize is the size of the large transcript: enough that a driver must
// stream it.
const largeSize = 50 << 20

func testLargeTranscript(t *testing.T, e *env) {
	rt := redactTranscript(t, largeTranscript(orgA, "sub-1", "run-big", largeSize))
	if rt.Size() < largeSize {
		t.Fatalf("test bug: large transcript is %d bytes", rt.Size())
	}
	want := hashOf(t, rt.Open())
	e.put(t, scopeA, rt)
	for _, archived := range []bool{false, true} {
		rc, info, err := e.ts.Get(background(), scopeA, "run-big")
		must(t, err, "Get of the large transcript")
		got := hashOf(t, rc)
		must(t, rc.Close(), "Close")
		if got != want {
			t.Errorf("large transcript (archived %t) read back differs", archived)
		}
		if diff := cmp.Diff(e.info(rt, archived), info); diff != "" {
			t.Errorf("large transcript info (-want +got):\n%s", diff)
		}
		must(t, e.ts.Archive(background(), scopeA, "run-big"), "Archive")
	}
}

func testReaderSurvivesReplace(t *testing.T, e *env) {
	ctx := background()
	old := redactTranscript(t, largeTranscript(orgA, "sub-1", "run-1", 4<<20))
	want := hashOf(t, old.Open())
	e.put(t, scopeA, old)
	rc, _, err := e.ts.Get(ctx, scopeA, "run-1")
	must(t, err, "Get")
	defer rc.Close()
	first := make([]byte, 1024)
	_, err = io.ReadFull(rc, first)
	must(t, err, "reading the first bytes")

	e.put(t, scopeA, redactTranscript(t, newTranscript(orgA, "sub-1", "run-1", "replacement")))
	must(t, e.ts.Delete(ctx, scopeA, "run-1"), "Delete")

	// An error is allowed; a mix of old and new bytes is not.
	h, err := hashStream(io.MultiReader(bytes.NewReader(first), rc))
	if err == nil && h != want {
		t.Error("a reader opened before a replace and a delete did not yield the whole transcript it opened")
	}
}

func testTranscriptConcurrent(t *testing.T, e *env) {
	ctx := background()
	const n = 32
	var wg sync.WaitGroup

	// Distinct runs.
	distinct := make([]storage.RedactedTranscript, n)
	docs := make([][]byte, n)
	for i := range distinct {
		distinct[i] = redactTranscript(t, newTranscript(orgA, "sub-1", storage.RunID(fmt.Sprintf("run-%02d", i)), fmt.Sprint("writer ", i)))
		docs[i] = docOf(t, distinct[i])
	}
	for i, rt := range distinct {
		wg.Go(func() {
			if err := e.ts.Put(ctx, scopeA, rt); err != nil {
				t.Errorf("concurrent Put(%s): %v", rt.RunID(), err)
				return
			}
			rc, _, err := e.ts.Get(ctx, scopeA, storage.RunID(rt.RunID()))
			if err != nil {
				t.Errorf("Get(%s) after concurrent Put: %v", rt.RunID(), err)
				return
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, docs[i]) {
				t.Errorf("Get(%s) after concurrent Put: %d bytes, %v; not what was put", rt.RunID(), len(got), err)
			}
		})
	}
	wg.Wait()
	if got := e.storedBefore(t, base.Add(time.Hour), storage.Page{}); len(got) != n {
		t.Errorf("after %d concurrent Puts StoredBefore lists %d", n, len(got))
	}

	// One run, writers of different sizes and readers at once: every reader
	// sees nothing or one writer's whole transcript, and so does the end.
	valid := map[digest]bool{}
	same := make([]storage.RedactedTranscript, n)
	for i := range same {
		note := strings.Repeat(fmt.Sprintf("writer %02d ", i), (i%4+1)<<13)
		same[i] = redactTranscript(t, newTranscript(orgA, "sub-1", "run-same", note))
		valid[hashOf(t, same[i].Open())] = true
	}
	for _, rt := range same {
		wg.Go(func() {
			if err := e.ts.Put(ctx, scopeA, rt); err != nil {
				t.Errorf("concurrent Put of one run: %v", err)
			}
		})
		wg.Go(func() {
			rc, _, err := e.ts.Get(ctx, scopeA, "run-same")
			if errors.Is(err, storage.ErrNotFound) {
				return
			}
			if err != nil {
				t.Errorf("Get during concurrent Puts: %v", err)
				return
			}
			defer rc.Close()
			h, err := hashStream(rc)
			if err != nil {
				t.Errorf("reading during concurrent Puts: %v", err)
			} else if !valid[h] {
				t.Error("Get during concurrent Puts read a transcript no writer wrote (torn)")
			}
		})
	}
	wg.Wait()
	rc, _, err := e.ts.Get(ctx, scopeA, "run-same")
	must(t, err, "Get after concurrent Puts")
	defer rc.Close()
	if !valid[hashOf(t, rc)] {
		t.Error("after concurrent Puts of one run the transcript is no writer's (torn)")
	}
}

func testTranscriptCancelled(t *testing.T, e *env) {
	bg := background()
	live := redactTranscript(t, newTranscript(orgA, "sub-1", "run-live", "x"))
	archived := redactTranscript(t, newTranscript(orgA, "sub-1", "run-archived", "y"))
	e.put(t, scopeA, live)
	e.put(t, scopeA, archived)
	must(t, e.ts.Archive(bg, scopeA, "run-archived"), "Archive")

	ctx := cancelled()
	fresh := redactTranscript(t, newTranscript(orgA, "sub-1", "run-new", "z"))
	replacement := redactTranscript(t, newTranscript(orgA, "sub-1", "run-live", "replacement"))
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Put (new)", func() error { return e.ts.Put(ctx, scopeA, fresh) }},
		{"Put (replace)", func() error { return e.ts.Put(ctx, scopeA, replacement) }},
		{"Get", func() error { _, _, err := e.ts.Get(ctx, scopeA, "run-live"); return err }},
		{"Delete", func() error { return e.ts.Delete(ctx, scopeA, "run-live") }},
		{"Archive", func() error { return e.ts.Archive(ctx, scopeA, "run-live") }},
		{"Restore", func() error { return e.ts.Restore(ctx, scopeA, "run-archived") }},
		{"StoredBefore", func() error { _, err := e.ts.StoredBefore(ctx, base.Add(time.Hour), storage.Page{}); return err }},
	} {
		wantErr(t, c.call(), context.Canceled, "%s with a cancelled ctx", c.name)
	}
	e.checkNoTranscript(t, scopeA, "run-new")
	e.checkTranscript(t, scopeA, "run-live", docOf(t, live), e.info(live, false))
	e.checkTranscript(t, scopeA, "run-archived", docOf(t, archived), e.info(archived, true))
}

func testCancelledMidWrite(t *testing.T, e *env) {
	first := redactTranscript(t, largeTranscript(orgA, "sub-1", "run-1", 8<<20))
	second := redactTranscript(t, largeTranscript(orgA, "sub-1", "run-1", 16<<20))
	e.put(t, scopeA, first)
	valid := map[digest]string{hashOf(t, first.Open()): "the first", hashOf(t, second.Open()): "the second"}

	ctx, cancel := context.WithCancel(background())
	done := make(chan error, 1)
	go func() { done <- e.ts.Put(ctx, scopeA, second) }()
	cancel()
	err := <-done

	rc, _, getErr := e.ts.Get(background(), scopeA, "run-1")
	must(t, getErr, "Get after a cancelled replace")
	defer rc.Close()
	got, ok := valid[hashOf(t, rc)]
	switch {
	case !ok:
		t.Errorf("after a Put cancelled mid-write (error %v) the transcript is torn", err)
	case err == nil && got != "the second":
		t.Error("Put returned nil but the transcript is the old one")
	}
}
