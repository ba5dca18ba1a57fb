package sqlitestore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/scantest"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/sqlitestore"
)

// traced is a submission whose every stored string is distinctive, so that
// a scan of the files can tell whether any of it is left.
type traced struct {
	sub  storage.Submission
	runs []storage.Run
}

func (tr traced) strings() []string {
	out := []string{string(tr.sub.ID), tr.sub.Owner, tr.sub.AgentName, tr.sub.Image}
	for _, r := range tr.runs {
		out = append(out, string(r.ID), r.Result.Detail)
	}
	return out
}

func mark(what string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return what + "-" + hex.EncodeToString(b)
}

// fill stores n traced submissions of org, each with runs that then finish
// with results of varied size: rows and updates enough for SQLite to split
// and rebalance pages while they live.
func fill(t *testing.T, s *sqlitestore.Store, org auth.OrgID, n int) []traced {
	t.Helper()
	ctx, scope := context.Background(), auth.InternalScope(org)
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	out := make([]traced, n)
	for i := range out {
		sub := storage.Submission{ID: storage.SubmissionID(mark("sub")), Org: org, Owner: mark("owner"),
			AgentName: mark("agent"), Image: mark("image"), CreatedAt: at}
		var runs []storage.Run
		for k := range 6 {
			task := storage.TaskID(fmt.Sprintf("task-%d", k))
			sub.Tasks = append(sub.Tasks, task)
			runs = append(runs, storage.Run{ID: storage.RunID(mark("run")), Submission: sub.ID, Org: org, Task: task, State: storage.RunQueued, CreatedAt: at})
		}
		if err := s.CreateSubmission(ctx, scope, sub, runs); err != nil {
			t.Fatal(err)
		}
		for k := range runs {
			r := &runs[k]
			r.State, r.StartedAt, r.FinishedAt = storage.RunFinished, at.Add(time.Second), at.Add(time.Minute)
			r.Result = &storage.Result{Passed: true, Score: 1, Detail: mark("detail") + strings.Repeat(".", (i*37+k*101)%900)}
			if err := s.UpdateRun(ctx, scope, *r); err != nil {
				t.Fatal(err)
			}
		}
		out[i] = traced{sub, runs}
	}
	return out
}

func bytesOf(strs []string) [][]byte {
	out := make([][]byte, len(strs))
	for i, s := range strs {
		out[i] = []byte(s)
	}
	return out
}

// TestErasureLeavesNoTrace erases submissions and then reads every byte of
// the database file, its write-ahead log and its shared-memory index, with
// the store open and after it is closed: no string of an erased submission
// (id, owner, agent name, image, run ids, result details) is left, and
// those of the submissions kept are all there (P4).
//
// Its size is what it takes to fail without VACUUM: with secure_delete and
// the checkpoint alone, each of 20 runs here found 4 to 8 strings of the
// erased submissions in the unused space of rebalanced pages.
func TestErasureLeavesNoTrace(t *testing.T) {
	dir := t.TempDir()
	s := open(t, filepath.Join(dir, "meta.db"), nil)
	ctx := context.Background()
	subs := fill(t, s, "org-a", 150)
	var erased, kept []string
	for i, tr := range subs {
		if i%3 != 0 {
			kept = append(kept, tr.strings()...)
			continue
		}
		if err := s.DeleteSubmission(ctx, auth.InternalScope("org-a"), tr.sub.ID); err != nil {
			t.Fatalf("DeleteSubmission(%s): %v", tr.sub.ID, err)
		}
		erased = append(erased, tr.strings()...)
	}
	n := scantest.ScanDir(t, dir, bytesOf(erased), kept...)
	t.Logf("open: scanned %d bytes", n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	n = scantest.ScanDir(t, dir, bytesOf(erased), kept...)
	t.Logf("closed: scanned %d bytes", n)
}

// TestErasureWithReaderOnOldSnapshot erases while another connection holds
// a read transaction open: the submission is deleted at once, the scrub
// reports that it could not cut the write-ahead log, and Scrub, called again
// once the reader is done, leaves no trace.
func TestErasureWithReaderOnOldSnapshot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meta.db")
	s := open(t, path, &sqlitestore.Options{BusyTimeout: 50 * time.Millisecond})
	defer s.Close()
	ctx, scope := context.Background(), auth.InternalScope("org-a")
	subs := fill(t, s, "org-a", 20)

	conn, err := rawDB(t, path).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM runs").Scan(&n); err != nil || n != 20*6 {
		t.Fatalf("the reader counts %d runs (%v), want %d", n, err, 20*6)
	}

	victim := subs[0]
	err = s.DeleteSubmission(ctx, scope, victim.sub.ID)
	if !errors.Is(err, sqlitestore.ErrNotScrubbed) {
		t.Fatalf("DeleteSubmission with a reader on an older snapshot: %v, want ErrNotScrubbed", err)
	}
	if _, err := s.GetSubmission(ctx, scope, victim.sub.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("GetSubmission after the unscrubbed erasure: %v, want ErrNotFound", err)
	}
	if fi, err := os.Stat(path + "-wal"); err != nil || fi.Size() == 0 {
		t.Fatalf("the write-ahead log: %v, %v; want the pages the reader still needs", fi, err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM runs").Scan(&n); err != nil || n != 20*6 {
		t.Errorf("the reader's snapshot changed under it: %d runs (%v)", n, err)
	}

	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := s.Scrub(ctx); err != nil {
		t.Fatalf("Scrub after the reader is done: %v", err)
	}
	var kept []string
	for _, tr := range subs[1:] {
		kept = append(kept, tr.strings()...)
	}
	scantest.ScanDir(t, dir, bytesOf(victim.strings()), kept...)
}

func TestScrubHonoursContext(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "meta.db"), nil)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Scrub(ctx); !errors.Is(err, context.Canceled) || !errors.Is(err, sqlitestore.ErrNotScrubbed) {
		t.Errorf("Scrub with a cancelled context: %v, want context.Canceled and ErrNotScrubbed", err)
	}
}
