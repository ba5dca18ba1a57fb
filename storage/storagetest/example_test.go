package storagetest_test

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/storagetest"
)

// memHarness is how a driver plugs into the suite; a driver's whole
// conformance test is then
//
//	func TestConformance(t *testing.T) {
//		storagetest.RunConformanceTests(t, func(*testing.T) storagetest.Harness { return newMemHarness() })
//	}
type memHarness struct {
	s   *memstore.Store
	mu  sync.Mutex
	now time.Time
}

var _ storagetest.Harness = (*memHarness)(nil)

func newMemHarness() *memHarness {
	h := &memHarness{}
	// The store reads the harness's clock, which the suite sets.
	h.s = memstore.New(&memstore.Options{Now: func() time.Time {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.now
	}})
	return h
}

func (h *memHarness) Metadata() storage.MetadataStore      { return h.s }
func (h *memHarness) Transcripts() storage.TranscriptStore { return h.s }
func (h *memHarness) Close()                               {}

func (h *memHarness) SetNow(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = t
}

func ExampleHarness() {
	h := newMemHarness()
	defer h.Close()
	h.SetNow(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))

	tr := &storage.Transcript{Run: "run-1", Submission: "sub-1", Org: "acme", Goal: "the goal"}
	rt, err := redact.Default.Redact(tr, redact.Sensitive{Goal: tr.Goal})
	if err != nil {
		log.Fatal(err)
	}
	scope := auth.InternalScope("acme")
	if err := h.Transcripts().Put(context.Background(), scope, rt); err != nil {
		log.Fatal(err)
	}
	rc, info, err := h.Transcripts().Get(context.Background(), scope, "run-1")
	if err != nil {
		log.Fatal(err)
	}
	rc.Close()
	fmt.Println(info.Run, info.StoredAt.Format(time.RFC3339))
	// Output:
	// run-1 2026-03-01T12:00:00Z
}
