package filestore_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/internal/scantest"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/filestore"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/storagetest"
)

type harness struct {
	s   *filestore.Store
	mu  sync.Mutex
	now time.Time
}

func (h *harness) Metadata() storage.MetadataStore      { return nil }
func (h *harness) Transcripts() storage.TranscriptStore { return h.s }
func (h *harness) Close()                               { h.s.Close() }

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
		s, err := filestore.Open(t.TempDir(), &filestore.Options{Now: h.clock})
		if err != nil {
			t.Fatal(err)
		}
		h.s = s
		return h
	})
}

var (
	ctx    = context.Background()
	orgA   = auth.OrgID("org-a")
	scopeA = auth.InternalScope(orgA)
)

func open(t testing.TB, root string) *filestore.Store {
	t.Helper()
	s, err := filestore.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// makeTranscript is a transcript of run whose bytes follow from run and gen
// alone and whose size grows with gen, so that a torn file cannot pass for a
// whole one. Its submission id names gen.
func makeTranscript(t testing.TB, run string, gen, size int) storage.RedactedTranscript {
	t.Helper()
	rt, err := transcriptOf(run, gen, size)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func transcriptOf(run string, gen, size int) (storage.RedactedTranscript, error) {
	seed := sha256.Sum256([]byte(fmt.Sprint(run, "/", gen)))
	line := strings.Repeat(fmt.Sprintf("%x", seed), 1+size/64)[:size]
	tr := &storage.Transcript{
		Schema: storage.TranscriptSchema, Run: storage.RunID(run), Submission: storage.SubmissionID(fmt.Sprint("gen-", gen)),
		Org: string(orgA), Task: "task-1", Goal: "the goal",
		Events: []storage.Event{{Seq: 1, Kind: storage.EventLog, Log: &storage.Log{Stream: "stdout", Data: line}}},
	}
	return redact.Default.Redact(tr, redact.Sensitive{Goal: tr.Goal})
}

func readAll(t testing.TB, s *filestore.Store, run storage.RunID) ([]byte, storage.TranscriptInfo) {
	t.Helper()
	rc, info, err := s.Get(ctx, scopeA, run)
	if err != nil {
		t.Fatalf("Get(%s): %v", run, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %s: %v", run, err)
	}
	return b, info
}

const (
	crashEnv    = "COMPATOOL_FILESTORE_CRASH_ROOT"
	crashGenEnv = "COMPATOOL_FILESTORE_CRASH_GEN"
)

// crashRuns are the runs the crash child writes in turn, each time anew.
const crashRuns = 5

func crashSize(gen int) int { return 1<<20 + gen%7*(1<<20) }

// TestMain makes the test binary the crash test's writer when crashEnv is set.
func TestMain(m *testing.M) {
	if root := os.Getenv(crashEnv); root != "" {
		crashWriter(root)
		return
	}
	os.Exit(m.Run())
}

// crashWriter puts transcripts under root until it is killed, saying on
// stdout which it has stored. Its generations start at first.
func crashWriter(root string) {
	first, err := strconv.Atoi(os.Getenv(crashGenEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := filestore.Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for gen := first; ; gen++ {
		run := fmt.Sprint("run-", gen%crashRuns)
		rt, err := transcriptOf(run, gen, crashSize(gen))
		if err == nil {
			fmt.Println("writing")
			err = s.Put(ctx, scopeA, rt)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("stored %s %d\n", run, gen)
	}
}

// TestCrash kills a writer with SIGKILL in the middle of its writes and
// checks that every transcript is whole, every acknowledged write is there,
// and no temporary file survives reopening. It kills a writer on the same
// root again until one kill has left a temporary file behind (a kill can
// land between two files), at most ten times.
func TestCrash(t *testing.T) {
	root := t.TempDir()
	acked := map[string]int{}
	temps := 0
	for round := 0; round < 10 && temps == 0; round++ {
		crashOnce(t, root, round*1000, acked)
		temps = countTemps(t, root)
		t.Logf("round %d: %d temporary files before reopening", round, temps)
		checkAfterCrash(t, root, acked)
	}
	if temps == 0 {
		t.Log("no kill landed while a temporary file existed; TestLeftovers covers their removal")
	}
}

// crashOnce runs a writer on root, kills it in the middle of a Put after it
// has stored every run three times, and records in acked the last
// generation of each run it acknowledged.
func crashOnce(t *testing.T, root string, first int, acked map[string]int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+root, crashGenEnv+"="+strconv.Itoa(first))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	n := 0
	for lines.Scan() {
		var run string
		var gen int
		if _, err := fmt.Sscanf(lines.Text(), "stored %s %d", &run, &gen); err == nil {
			acked[run] = gen
			n++
		} else if n >= 3*crashRuns {
			break // the writer has begun a Put: kill it in the middle
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if n < 3*crashRuns {
		t.Fatalf("the writer stored %d transcripts before it died; stderr: %s", n, stderr.String())
	}
}

func checkAfterCrash(t *testing.T, root string, acked map[string]int) {
	t.Helper()
	s, err := filestore.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := countTemps(t, root); n != 0 {
		t.Errorf("%d temporary files left after reopening", n)
	}
	for i := range crashRuns {
		run := fmt.Sprint("run-", i)
		got, info := readAll(t, s, storage.RunID(run))
		gen, err := strconv.Atoi(strings.TrimPrefix(string(info.Submission), "gen-"))
		if err != nil {
			t.Fatalf("%s: submission %q names no generation", run, info.Submission)
		}
		if gen < acked[run] {
			t.Errorf("%s: generation %d is stored, but %d was acknowledged", run, gen, acked[run])
		}
		want := makeTranscript(t, run, gen, crashSize(gen))
		if wantDoc, _ := io.ReadAll(want.Open()); !bytes.Equal(got, wantDoc) || info.Size != want.Size() {
			t.Errorf("%s: generation %d is torn: %d bytes, want %d", run, gen, len(got), want.Size())
		}
	}
	list, err := s.StoredBefore(ctx, time.Now().Add(time.Hour), storage.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != crashRuns {
		t.Errorf("StoredBefore lists %d transcripts, want %d", len(list), crashRuns)
	}
}

func countTemps(t *testing.T, root string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if strings.HasSuffix(path, ".tmp") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLeftovers plants what a crash can leave behind and checks that reads
// and listings ignore it and Open tidies it.
func TestLeftovers(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	orgDir := filepath.Join(root, "live", string(orgA))
	live, archived := filepath.Join(orgDir, "run-1.json"), filepath.Join(root, "archive", string(orgA), "run-1.json")
	if err := s.Put(ctx, scopeA, makeTranscript(t, "run-1", 1, 1000)); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	// A stray file in an area is not an organisation.
	if err := os.WriteFile(filepath.Join(root, "live", "README"), []byte("notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(orgDir, "123456.tmp")
	if err := os.WriteFile(torn, old[:100], 0o600); err != nil {
		t.Fatal(err)
	}
	// A crash between a Put's rename and its removal of the archived copy
	// leaves the run in both areas: the live copy wins.
	rt2 := makeTranscript(t, "run-1", 2, 2000)
	doc2, _ := io.ReadAll(rt2.Open())
	if err := s.Put(ctx, scopeA, rt2); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(archived), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(archived, old, 0o600); err != nil {
		t.Fatal(err)
	}

	list, err := s.StoredBefore(ctx, time.Now().Add(time.Hour), storage.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Run != "run-1" || list[0].Archived {
		t.Errorf("StoredBefore with leftovers = %+v, want run-1 live only", list)
	}
	if got, info := readAll(t, s, "run-1"); !bytes.Equal(got, doc2) || info.Archived {
		t.Errorf("Get with a copy in both areas read archived=%t, %d bytes; want the live copy", info.Archived, len(got))
	}
	if err := s.Restore(ctx, scopeA, "run-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(archived); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Restore with a live copy left the archived one: %v", err)
	}

	s.Close()
	open(t, root)
	if _, err := os.Stat(torn); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open left the temporary file: %v", err)
	}
}

func TestOpenLocksRoot(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	if _, err := filestore.Open(root, nil); err == nil {
		t.Fatal("a second Open of a root in use succeeded")
	}
	s.Close()
	open(t, root)
	if err := s.Put(ctx, scopeA, makeTranscript(t, "run-1", 1, 10)); err == nil {
		t.Error("Put on a closed store succeeded")
	}
}

// TestOrgPaths checks that no organisation id becomes a path outside its
// directory.
func TestOrgPaths(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	s := open(t, root)
	for _, org := range []auth.OrgID{"..", ".", "../x", "a/b", "/abs"} {
		sc := auth.InternalScope(org)
		_, _, err := s.Get(ctx, sc, "run-1")
		if !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Get under org %q: %v, want ErrInvalid", org, err)
		}
		if err := s.Archive(ctx, sc, "run-1"); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Archive under org %q: %v, want ErrInvalid", org, err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(root))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the store wrote beside its root: %v", entries)
	}
}

func TestMaxTranscriptBytes(t *testing.T) {
	s, err := filestore.Open(t.TempDir(), &filestore.Options{MaxTranscriptBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, scopeA, makeTranscript(t, "run-1", 1, 100)); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Put over MaxTranscriptBytes: %v, want ErrInvalid", err)
	}
}

// TestScan runs the pipeline with the store and reads every byte under its
// root: no goal, token or private task plaintext may be there.
func TestScan(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	res := scantest.Pipeline(t, memstore.New(nil), s)
	first := res.Runs[0]
	if err := s.Archive(ctx, auth.InternalScope(first.Org), first.ID); err != nil {
		t.Fatal(err)
	}
	want := []string{storage.Redacted, `"add_note"`}
	for _, r := range res.Runs {
		want = append(want, string(r.ID))
	}
	scantest.ScanDir(t, root, res.Secrets, want...)
	if _, err := os.Stat(filepath.Join(root, "archive", string(first.Org), string(first.ID)+".json")); err != nil {
		t.Errorf("the archived transcript is not in the archive area: %v", err)
	}
}

const benchSize = 10 << 20

func BenchmarkPut(b *testing.B) {
	s := open(b, b.TempDir())
	rt := makeTranscript(b, "run-1", 1, benchSize)
	b.SetBytes(rt.Size())
	for b.Loop() {
		if err := s.Put(ctx, scopeA, rt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s := open(b, b.TempDir())
	rt := makeTranscript(b, "run-1", 1, benchSize)
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
