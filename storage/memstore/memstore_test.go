package memstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/storagetest"
)

type harness struct {
	s   *memstore.Store
	mu  sync.Mutex
	now time.Time
}

func (h *harness) Metadata() storage.MetadataStore      { return h.s }
func (h *harness) Transcripts() storage.TranscriptStore { return h.s }
func (h *harness) Close()                               {}

func (h *harness) SetNow(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = t
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

func TestConformance(t *testing.T) {
	storagetest.RunConformanceTests(t, func(t *testing.T) storagetest.Harness {
		h := &harness{}
		h.s = memstore.New(&memstore.Options{Now: h.clock})
		return h
	})
}

func TestFailNext(t *testing.T) {
	s := memstore.New(nil)
	ctx, scope := context.Background(), auth.InternalScope("org-a")
	boom := errors.New("disk on fire")
	s.FailNext("GetSubmission", boom)
	if _, err := s.GetSubmission(ctx, scope, "sub-1"); !errors.Is(err, boom) {
		t.Errorf("first GetSubmission after FailNext: %v, want the injected error", err)
	}
	if _, err := s.GetSubmission(ctx, scope, "sub-1"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("second GetSubmission: %v, want ErrNotFound (a fault fires once)", err)
	}
	s.FailNext("SetPublic", boom)
	s.FailNext("SetPublic", nil)
	if err := s.SetPublic(ctx, scope, "sub-1", true); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("SetPublic after a cleared fault: %v, want ErrNotFound", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("FailNext of an unknown method did not panic")
		}
	}()
	s.FailNext("GetSubmissions", boom)
}

func TestTranscriptLimit(t *testing.T) {
	s := memstore.New(&memstore.Options{MaxTranscriptBytes: 10})
	rt, err := redact.Default.Redact(&storage.Transcript{Run: "run-1", Submission: "sub-1", Org: "org-a"}, redact.Sensitive{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), auth.InternalScope("org-a"), rt); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Put over MaxTranscriptBytes: %v, want ErrInvalid", err)
	}
}
