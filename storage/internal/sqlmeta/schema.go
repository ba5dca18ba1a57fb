package sqlmeta

import (
	"context"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"
)

// ErrSchemaTooNew reports a database whose schema was migrated by newer code
// than this one. Nothing was changed; run the newer code against it.
var ErrSchemaTooNew = errors.New("database schema is newer than this code")

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one numbered schema file.
type Migration struct {
	Version int    // from the file name's number, counting from 1
	Name    string // the file name, e.g. "0001_init.sql"
	SQL     string
}

var loadMigrations = sync.OnceValue(func() []Migration {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		panic(err)
	}
	// Glob returns names sorted; a gap or a repeated number is a build
	// mistake, caught by the first test that opens a store.
	out := make([]Migration, len(names))
	for i, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v != i+1 {
			panic(fmt.Sprintf("sqlmeta: migration %s: want the name %04d_<what>.sql", base, i+1))
		}
		b, err := migrationFS.ReadFile(name)
		if err != nil {
			panic(err)
		}
		out[i] = Migration{Version: v, Name: base, SQL: string(b)}
	}
	return out
})

// Migrations returns the schema files in order.
func Migrations() []Migration { return loadMigrations() }

// SchemaVersion is the version a database has once [Store.Migrate] ran.
func SchemaVersion() int { return len(Migrations()) }

// SchemaID names the schema by version and content, for caches of built
// databases that must not outlive a change of a migration file.
func SchemaID() string {
	h := sha256.New()
	for _, m := range Migrations() {
		h.Write([]byte(m.SQL))
	}
	return fmt.Sprintf("v%d-%x", SchemaVersion(), h.Sum(nil)[:6])
}

const (
	sqlCreateMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  applied_at TEXT NOT NULL
)`
	sqlListMigrations  = `SELECT version, name FROM schema_migrations ORDER BY version`
	sqlRecordMigration = `INSERT INTO schema_migrations (version, name, applied_at) VALUES (CAST(? AS INTEGER), ?, ?)`
)

type appliedMigration struct {
	version int64
	name    string
}

func (s *Store) appliedMigrations(ctx context.Context) ([]appliedMigration, error) {
	res, err := s.x.Exec(ctx, false, Stmt{SQL: sqlListMigrations})
	if err != nil {
		return nil, err
	}
	var out []appliedMigration
	for _, r := range res.rows(0) {
		out = append(out, appliedMigration{version: r.int(0), name: r.str(1)})
	}
	return out, nil
}

// Migrate brings the database to [SchemaVersion]: it applies, in order and
// each in one transaction with its record in schema_migrations, the
// migrations the database lacks. It is safe to run concurrently from several
// processes and to retry. A database migrated by newer code fails with
// [ErrSchemaTooNew] and is left as it is.
func (s *Store) Migrate(ctx context.Context) error {
	if _, err := s.x.Exec(ctx, true, Stmt{SQL: sqlCreateMigrations}); err != nil {
		return fmt.Errorf("%s: creating schema_migrations: %w", s.name, err)
	}
	applied, err := s.appliedMigrations(ctx)
	if err != nil {
		return fmt.Errorf("%s: reading schema_migrations: %w", s.name, err)
	}
	known := Migrations()
	if err := s.checkHistory(applied, known); err != nil {
		return err
	}
	for _, m := range known[len(applied):] {
		at, _ := timeText(s.now())
		_, err := s.x.Exec(ctx, true,
			Stmt{SQL: m.SQL},
			Stmt{SQL: sqlRecordMigration, Args: []string{strconv.Itoa(m.Version), m.Name, at}})
		if err != nil {
			// Another process may have applied it meanwhile, or an attempt
			// of ours whose answer was lost did.
			again, rerr := s.appliedMigrations(ctx)
			if rerr == nil && len(again) >= m.Version && s.checkHistory(again, known) == nil {
				continue
			}
			return fmt.Errorf("%s: applying migration %s: %w", s.name, m.Name, err)
		}
		s.log.InfoContext(ctx, "applied schema migration", "store", s.name, "migration", m.Name)
	}
	return nil
}

// checkHistory checks that the applied migrations are a prefix of known.
func (s *Store) checkHistory(applied []appliedMigration, known []Migration) error {
	if n := len(applied); n > 0 && applied[n-1].version > int64(len(known)) {
		return fmt.Errorf("%s: %w: the database is at schema version %d, this code knows versions up to %d; open it with the newer compatool that migrated it",
			s.name, ErrSchemaTooNew, applied[n-1].version, len(known))
	}
	for i, a := range applied {
		if a.version != int64(i+1) || a.name != known[i].Name {
			return fmt.Errorf("%s: the database's schema history (version %d %q) is not this code's (version %d %q); it was not made by compatool or its migrations were edited",
				s.name, a.version, a.name, i+1, known[i].Name)
		}
	}
	return nil
}
