package filestore_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/filestore"
)

func Example() {
	root, err := os.MkdirTemp("", "transcripts")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)
	s, err := filestore.Open(root, &filestore.Options{
		Now: func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx, scope := context.Background(), auth.InternalScope("acme")
	tr := &storage.Transcript{Run: "run-1", Submission: "sub-1", Org: "acme", Goal: "the private goal"}
	rt, err := redact.Default.Redact(tr, redact.Sensitive{Goal: tr.Goal})
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Put(ctx, scope, rt); err != nil {
		log.Fatal(err)
	}
	if err := s.Archive(ctx, scope, "run-1"); err != nil {
		log.Fatal(err)
	}
	rc, info, err := s.Get(ctx, scope, "run-1")
	if err != nil {
		log.Fatal(err)
	}
	defer rc.Close()
	n, _ := io.Copy(io.Discard, rc)
	fmt.Println(info.Run, info.Archived, info.StoredAt.Format(time.RFC3339), n == info.Size)
	// Output:
	// run-1 true 2026-03-01T12:00:00Z true
}
