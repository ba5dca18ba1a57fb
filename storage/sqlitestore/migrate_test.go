package sqlitestore_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/sqlitestore"
)

// rawDB opens the file with plain database/sql, to look behind the store.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

type migration struct {
	Version int
	Name    string
}

func migrations(t *testing.T, db *sql.DB) []migration {
	t.Helper()
	rows, err := db.Query(`SELECT version, name FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []migration
	for rows.Next() {
		var m migration
		if err := rows.Scan(&m.Version, &m.Name); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestMigrationsAppliedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// Concurrent first opens of one fresh file: each migration runs once.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := sqlitestore.Open(context.Background(), path, &sqlitestore.Options{Now: func() time.Time { return at }})
			if err != nil {
				t.Errorf("concurrent Open: %v", err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	s := open(t, path, nil)
	ctx, scope := context.Background(), auth.InternalScope("org-a")
	sub := storage.Submission{ID: "sub-1", Org: "org-a", Owner: "u", Image: "img"}
	if err := s.CreateSubmission(ctx, scope, sub, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path, nil) // a reopen keeps the data and migrates nothing
	defer s.Close()
	if _, err := s.GetSubmission(ctx, scope, "sub-1"); err != nil {
		t.Errorf("GetSubmission after reopen: %v", err)
	}
	db := rawDB(t, path)
	if diff := cmp.Diff([]migration{{1, "0001_init.sql"}}, migrations(t, db)); diff != "" {
		t.Errorf("schema_migrations (-want +got):\n%s", diff)
	}
	var stamp string
	if err := db.QueryRow(`SELECT applied_at FROM schema_migrations WHERE version = 1`).Scan(&stamp); err != nil || stamp != "2026-01-02T03:04:05.000000000Z" {
		t.Errorf("applied_at = %q, %v; want the Options.Now time", stamp, err)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	open(t, path, nil).Close()
	db := rawDB(t, path)
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (2, '0002_future.sql', 'x')`); err != nil {
		t.Fatal(err)
	}
	_, err := sqlitestore.Open(context.Background(), path, nil)
	if !errors.Is(err, sqlitestore.ErrSchemaTooNew) {
		t.Fatalf("Open of a database at a newer schema: %v, want ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), "version 2") {
		t.Errorf("error %q does not name the database's version", err)
	}
	if got := len(migrations(t, db)); got != 2 {
		t.Errorf("refused Open changed schema_migrations: %d rows", got)
	}

	// A history this code did not write is refused too.
	path2 := filepath.Join(t.TempDir(), "meta.db")
	open(t, path2, nil).Close()
	db2 := rawDB(t, path2)
	if _, err := db2.Exec(`UPDATE schema_migrations SET name = 'edited.sql'`); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitestore.Open(context.Background(), path2, nil); err == nil || !strings.Contains(err.Error(), "schema history") {
		t.Errorf("Open of a database with another schema history: %v, want a schema history error", err)
	}
}

func TestOpenRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if s, err := sqlitestore.Open(context.Background(), p, nil); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want an error", p)
		}
	}
}
