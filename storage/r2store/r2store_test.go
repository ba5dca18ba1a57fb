package r2store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/s3test"
	"github.com/compatool/compatool/internal/scantest"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/r2store"
	"github.com/compatool/compatool/storage/storagetest"
)

var (
	ctx    = context.Background()
	orgA   = auth.OrgID("org-a")
	scopeA = auth.InternalScope(orgA)
)

const bucket = "transcripts"

// startServer starts versitygw with an empty bucket and returns the options
// that reach it.
func startServer(t testing.TB) (*s3test.Server, r2store.Options, *s3.Client) {
	t.Helper()
	srv := s3test.Start(t)
	opts := r2store.Options{
		Endpoint: srv.Endpoint, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		Region: srv.Region, UsePathStyle: true,
	}
	client := s3.New(s3.Options{
		Region: srv.Region, BaseEndpoint: aws.String(srv.Endpoint), UsePathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}, nil
		}),
	})
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket: %v", err)
	}
	return srv, opts, client
}

type harness struct {
	s   *r2store.Store
	mu  sync.Mutex
	now time.Time
}

func (h *harness) Metadata() storage.MetadataStore      { return nil }
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
	_, opts, _ := startServer(t)
	var n atomic.Int64
	storagetest.RunConformanceTests(t, func(t *testing.T) storagetest.Harness {
		h := &harness{}
		o := opts
		o.Now = h.clock
		o.Prefix = fmt.Sprintf("test-%d/", n.Add(1)) // each harness starts empty
		s, err := r2store.New(bucket, &o)
		if err != nil {
			t.Fatal(err)
		}
		h.s = s
		return h
	})
}

func newStore(t testing.TB, opts r2store.Options) *r2store.Store {
	t.Helper()
	s, err := r2store.New(bucket, &opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// makeTranscript is a transcript of run with a log line of size bytes that
// follow from note.
func makeTranscript(t testing.TB, run, note string, size int) (storage.RedactedTranscript, []byte) {
	t.Helper()
	tr := &storage.Transcript{
		Schema: storage.TranscriptSchema, Run: storage.RunID(run), Submission: "sub-1", Org: string(orgA), Goal: "the goal",
		Events: []storage.Event{{Seq: 1, Kind: storage.EventLog, Log: &storage.Log{Stream: "stdout", Data: strings.Repeat(note, 1+size/len(note))[:size]}}},
	}
	rt, err := redact.Default.Redact(tr, redact.Sensitive{Goal: tr.Goal})
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := io.ReadAll(rt.Open())
	return rt, doc
}

func get(t *testing.T, s *r2store.Store, run storage.RunID) ([]byte, storage.TranscriptInfo) {
	t.Helper()
	rc, info, err := s.Get(ctx, scopeA, run)
	if err != nil {
		t.Fatalf("Get(%s): %v", run, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b, info
}

// TestSignatureChecked makes sure the server under test refuses requests
// signed with the wrong key, so that the conformance run proves signing.
func TestSignatureChecked(t *testing.T) {
	_, opts, _ := startServer(t)
	opts.SecretAccessKey = "not-the-secret"
	rt, _ := makeTranscript(t, "run-1", "x", 10)
	err := newStore(t, opts).Put(ctx, scopeA, rt)
	if err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Errorf("Put signed with the wrong secret: %v, want SignatureDoesNotMatch", err)
	}
}

// classRecorder records the storage class each copy request asks for.
// versitygw accepts the header but keeps every object STANDARD, so the test
// checks what the store sends.
type classRecorder struct {
	mu      sync.Mutex
	classes map[string]string // copy destination path → x-amz-storage-class
}

func (c *classRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("X-Amz-Copy-Source") != "" {
		c.mu.Lock()
		c.classes[r.URL.Path] = r.Header.Get("X-Amz-Storage-Class")
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestArchiveStorageClassAndBucket(t *testing.T) {
	_, opts, client := startServer(t)
	const archiveBucket = "transcripts-archive"
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(archiveBucket)}); err != nil {
		t.Fatal(err)
	}
	rec := &classRecorder{classes: map[string]string{}}
	opts.ArchiveBucket, opts.Prefix, opts.HTTPClient = archiveBucket, "p/", &http.Client{Transport: rec}
	s := newStore(t, opts)
	rt, doc := makeTranscript(t, "run-1", "x", 1000)
	if err := s.Put(ctx, scopeA, rt); err != nil {
		t.Fatal(err)
	}
	if err := s.Archive(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(archiveBucket), Key: aws.String("p/archive/org-a/run-1.json")}); err != nil {
		t.Errorf("the archived object is not in the archive bucket: %v", err)
	}
	if got, info := get(t, s, "run-1"); !bytes.Equal(got, doc) || !info.Archived {
		t.Errorf("Get of the archived transcript: archived=%t, %d bytes, want the %d put", info.Archived, len(got), len(doc))
	}
	if err := s.Restore(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"/" + archiveBucket + "/p/archive/org-a/run-1.json": string(types.StorageClassStandardIa),
		"/" + bucket + "/p/live/org-a/run-1.json":           "",
	}
	if diff := cmp.Diff(want, rec.classes); diff != "" {
		t.Errorf("storage classes of copies (-want +got):\n%s", diff)
	}
}

// TestBothKeys builds the states a crash between the two requests of
// Archive, Restore or Put leaves behind, and checks that the live copy wins
// and the next call tidies up.
func TestBothKeys(t *testing.T) {
	_, opts, client := startServer(t)
	s := newStore(t, opts)
	const live, archived = "live/org-a/run-1.json", "archive/org-a/run-1.json"
	copyTo := func(dst, src string) {
		t.Helper()
		_, err := client.CopyObject(ctx, &s3.CopyObjectInput{Bucket: aws.String(bucket), Key: aws.String(dst), CopySource: aws.String(bucket + "/" + src)})
		if err != nil {
			t.Fatal(err)
		}
	}
	exists := func(key string) bool {
		t.Helper()
		_, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		return err == nil
	}
	old, _ := makeTranscript(t, "run-1", "old", 1000)
	if err := s.Put(ctx, scopeA, old); err != nil {
		t.Fatal(err)
	}
	if err := s.Archive(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	copyTo("stale-archive", archived)
	rt, doc := makeTranscript(t, "run-1", "new", 2000)
	if err := s.Put(ctx, scopeA, rt); err != nil {
		t.Fatal(err)
	}

	// A Put over an archived transcript that died before its DELETE.
	copyTo(archived, "stale-archive")
	if got, info := get(t, s, "run-1"); !bytes.Equal(got, doc) || info.Archived {
		t.Errorf("Get with both keys: archived=%t, %d bytes; want the live %d", info.Archived, len(got), len(doc))
	}
	list, err := s.StoredBefore(ctx, time.Now().Add(time.Hour), storage.Page{})
	if err != nil || len(list) != 1 || list[0].Run != "run-1" {
		t.Errorf("StoredBefore with both keys = %+v, %v; want run-1 once", list, err)
	}
	if err := s.Restore(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	if exists(archived) || !exists(live) {
		t.Errorf("Restore with both keys: archived %t, live %t; want only live", exists(archived), exists(live))
	}
	if got, _ := get(t, s, "run-1"); !bytes.Equal(got, doc) {
		t.Error("Restore with both keys replaced the live transcript with the archived one")
	}

	// An Archive that died before its DELETE.
	copyTo(archived, live)
	if err := s.Archive(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	if !exists(archived) || exists(live) {
		t.Errorf("Archive with both keys: archived %t, live %t; want only archived", exists(archived), exists(live))
	}
	if got, info := get(t, s, "run-1"); !bytes.Equal(got, doc) || !info.Archived {
		t.Errorf("after Archive: archived=%t, %d bytes", info.Archived, len(got))
	}
}

func TestOptions(t *testing.T) {
	for _, c := range []struct {
		name   string
		bucket string
		opts   *r2store.Options
	}{
		{"no bucket", "", &r2store.Options{Endpoint: "http://127.0.0.1:1", AccessKeyID: "a", SecretAccessKey: "b"}},
		{"nil options", "b", nil},
		{"no credentials", "b", &r2store.Options{Endpoint: "http://127.0.0.1:1"}},
		{"limit too large", "b", &r2store.Options{Endpoint: "http://127.0.0.1:1", AccessKeyID: "a", SecretAccessKey: "b", MaxTranscriptBytes: r2store.MaxTranscriptBytes + 1}},
	} {
		if _, err := r2store.New(c.bucket, c.opts); err == nil {
			t.Errorf("New with %s succeeded", c.name)
		}
	}
}

func TestLimitsAndPaths(t *testing.T) {
	s, err := r2store.New(bucket, &r2store.Options{Endpoint: "http://127.0.0.1:1", AccessKeyID: "a", SecretAccessKey: "b", MaxTranscriptBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	// Both are refused before any request, so no server is needed.
	rt, _ := makeTranscript(t, "run-1", "x", 100)
	if err := s.Put(ctx, scopeA, rt); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Put over MaxTranscriptBytes: %v, want ErrInvalid", err)
	}
	for _, org := range []auth.OrgID{".", "..", "a/b"} {
		if _, _, err := s.Get(ctx, auth.InternalScope(org), "run-1"); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Get under org %q: %v, want ErrInvalid", org, err)
		}
	}
}

// TestScan runs the pipeline with the store and reads every byte in the
// server's directory: no goal, token or private task plaintext may be
// there.
func TestScan(t *testing.T) {
	srv, opts, _ := startServer(t)
	s := newStore(t, opts)
	res := scantest.Pipeline(t, memstore.New(nil), s)
	first := res.Runs[0]
	if err := s.Archive(ctx, auth.InternalScope(first.Org), first.ID); err != nil {
		t.Fatal(err)
	}
	want := []string{storage.Redacted, `"add_note"`}
	for _, r := range res.Runs {
		want = append(want, string(r.ID))
	}
	scantest.ScanDir(t, srv.Dir, res.Secrets, want...)
}

const benchSize = 10 << 20

func BenchmarkPut(b *testing.B) {
	_, opts, _ := startServer(b)
	s := newStore(b, opts)
	rt, _ := makeTranscript(b, "run-1", "0123456789abcdef", benchSize)
	b.SetBytes(rt.Size())
	for b.Loop() {
		if err := s.Put(ctx, scopeA, rt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	_, opts, _ := startServer(b)
	s := newStore(b, opts)
	rt, _ := makeTranscript(b, "run-1", "0123456789abcdef", benchSize)
	if err := s.Put(ctx, scopeA, rt); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(rt.Size())
	for b.Loop() {
		rc, _, err := s.Get(ctx, scopeA, "run-1")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
}
