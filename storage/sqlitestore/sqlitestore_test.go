package sqlitestore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/sqlitestore"
	"github.com/compatool/compatool/storage/storagetest"
)

// harness is a fresh database file per test. The suite's clock is not read:
// this store stamps no record.
type harness struct{ s *sqlitestore.Store }

func (h harness) Metadata() storage.MetadataStore      { return h.s }
func (h harness) Transcripts() storage.TranscriptStore { return nil }
func (h harness) SetNow(time.Time)                     {}
func (h harness) Close()                               { h.s.Close() }

func open(t testing.TB, path string, opts *sqlitestore.Options) *sqlitestore.Store {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.RunConformanceTests(t, func(t *testing.T) storagetest.Harness {
		return harness{open(t, filepath.Join(t.TempDir(), "meta.db"), nil)}
	})
}

func TestConformanceSealed(t *testing.T) {
	storagetest.RunConformanceTests(t, func(t *testing.T) storagetest.Harness {
		return harness{open(t, filepath.Join(t.TempDir(), "meta.db"), &sqlitestore.Options{Keyring: testKeyring(t)})}
	})
}
