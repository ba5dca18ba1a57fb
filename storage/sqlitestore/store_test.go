package sqlitestore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/sqlitestore"
)

func TestAuditTableIsAppendOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	s := open(t, path, nil)
	defer s.Close()
	rec := storage.AuditRecord{ID: "audit-1", At: time.Now(), Staff: "staff_1", Org: "org-a",
		Operation: auth.OpSupport, Reason: "ticket 1", Action: "results", Target: "sub-1"}
	if err := s.AppendAudit(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	// Not even SQL that goes around the store can change the log.
	db := rawDB(t, path)
	for _, q := range []string{`UPDATE audit SET reason = 'rewritten'`, `DELETE FROM audit`} {
		if _, err := db.Exec(q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: %v, want the trigger's refusal", q, err)
		}
	}
	got, err := s.ListAudit(context.Background(), auth.InternalScope("org-a"), storage.Page{})
	if err != nil || len(got) != 1 || got[0].Reason != "ticket 1" {
		t.Errorf("audit log after refused changes: %+v, %v", got, err)
	}
}

func TestSealedMetadata(t *testing.T) {
	ctx, scope := context.Background(), auth.InternalScope("org-a")
	path := filepath.Join(t.TempDir(), "meta.db")
	keys := testKeyring(t)
	s := open(t, path, &sqlitestore.Options{Keyring: keys})
	sub := storage.Submission{ID: "sub-1", Org: "org-a", Owner: "user_owner_marker", AgentName: "agent name marker",
		Image: "image-marker", Tasks: []storage.TaskID{"task-1"}, CreatedAt: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	if err := s.CreateSubmission(ctx, scope, sub, nil); err != nil {
		t.Fatal(err)
	}
	s.Close() // checkpoints the WAL into the file
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{sub.Owner, sub.AgentName, sub.Image} {
		if bytes.Contains(b, []byte(plain)) {
			t.Errorf("the database file holds %q in plaintext", plain)
		}
	}

	// Without the keyring the metadata cannot be read, and the error says
	// what to do.
	s = open(t, path, nil)
	_, err = s.GetSubmission(ctx, scope, sub.ID)
	if err == nil || !strings.Contains(err.Error(), "Options.Keyring") {
		t.Errorf("GetSubmission of sealed metadata without a keyring: %v, want an error naming Options.Keyring", err)
	}
	s.Close()

	// A keyring without the sealing key fails to open it.
	other, err := envelope.NewStaticKeys("k2", map[string][]byte{"k2": bytes.Repeat([]byte{9}, envelope.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	s = open(t, path, &sqlitestore.Options{Keyring: envelope.NewKeyring(other)})
	if _, err := s.GetSubmission(ctx, scope, sub.ID); !errors.Is(err, envelope.ErrDecrypt) {
		t.Errorf("GetSubmission with the wrong keyring: %v, want envelope.ErrDecrypt", err)
	}
	s.Close()

	s = open(t, path, &sqlitestore.Options{Keyring: keys})
	defer s.Close()
	got, err := s.GetSubmission(ctx, scope, sub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sub, got); diff != "" {
		t.Errorf("sealed submission round trip (-want +got):\n%s", diff)
	}
}

func TestRowLimit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "meta.db"), nil)
	defer s.Close()
	task := storage.Task{ID: "task-1", Environment: "notes", Month: "2026-03", Private: true, Sealed: make([]byte, 1<<20)}
	if err := s.PutTask(context.Background(), task); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("PutTask of a 1 MiB sealed content: %v, want ErrInvalid", err)
	}
	task.Sealed = make([]byte, 512<<10)
	if err := s.PutTask(context.Background(), task); err != nil {
		t.Errorf("PutTask of a 512 KiB sealed content: %v", err)
	}
	// Times outside what the schema's text encoding orders are refused.
	run := storage.Run{ID: "r", Submission: "s", Org: "org-a", Task: "task-1", State: storage.RunQueued,
		CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	sub := storage.Submission{ID: "s", Org: "org-a", Owner: "u", Image: "i", Tasks: []storage.TaskID{"task-1"}}
	if err := s.CreateSubmission(context.Background(), auth.InternalScope("org-a"), sub, []storage.Run{run}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("CreateSubmission with a run created in the year 10000: %v, want ErrInvalid", err)
	}
}
