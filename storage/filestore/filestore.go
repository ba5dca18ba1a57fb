// Package filestore is a [storage.TranscriptStore] that keeps run transcripts
// as files under one directory: the embedded, self-hosted default, with
// nothing to install.
//
// It keeps promises P5 (transcripts are kept, then archived) and P8 (only a
// [storage.RedactedTranscript] is ever written) of DESIGN.md, with the scope
// rules of package storage (P11): every file lives under its organisation's
// directory, so one organisation's scope can never name another's file.
//
// # Layout
//
//	<root>/.lock                     held (flock) while a Store is open
//	<root>/live/<org>/<run>.json     live transcripts
//	<root>/archive/<org>/<run>.json  archived transcripts
//	<root>/live/<org>/<random>.tmp   a write in progress
//
// Each file is one header line (JSON: schema, org, run, submission, stored-at
// in Unix nanoseconds, body size) followed by the transcript document, so the
// metadata is written and renamed together with the bytes it describes.
// Organisation and run ids are checked with [storage.ValidID] ("." and ".."
// are refused as organisations) before they become a path, so no id can leave
// its directory.
//
// # Atomicity
//
// Put writes a temporary file in the target directory, fsyncs it, renames it
// over the live name and fsyncs the directory: a reader sees the old
// transcript or the new one, never a torn one, even if ctx is cancelled or
// the process dies mid-write. Archive and Restore are renames between the
// live and the archive area of the same filesystem. When a crash leaves a
// run in both areas (a Put over an archived transcript that died before it
// removed the archived copy), the live file wins everywhere and the next
// Put, Archive, Restore or Delete of the run tidies the other. Temporary
// files left by a crash are never read or listed and are removed by [Open].
//
// Reads and writes stream: Put copies from the transcript's reader in chunks
// (checking ctx between chunks) and Get returns a reader over the open file,
// so a large transcript is never held in memory by the store. On Unix a
// reader keeps the file it opened even if the transcript is replaced or
// deleted meanwhile.
//
// One root is used by one process at a time: [Open] takes an exclusive lock
// on <root>/.lock (on Unix) and fails if another process holds it. The root
// must be on a case-sensitive filesystem, since ids differ by case; [Open]
// checks.
//
// # Cost
//
// Put, Get, Delete, Archive and Restore touch one or two files. StoredBefore
// reads the names in every organisation's live directory (no stat per file),
// sorts the names after Page.After, and then reads the header of candidates
// in run-id order until the page is full: O(N) names plus one small read per
// candidate examined, where N is the number of live transcripts.
package filestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

var _ storage.TranscriptStore = (*Store)(nil)

// DefaultMaxTranscriptBytes is the transcript size limit when
// [Options.MaxTranscriptBytes] is zero.
const DefaultMaxTranscriptBytes = 1 << 30

const (
	liveDir    = "live"
	archiveDir = "archive"
	lockName   = ".lock"
	ext        = ".json"
	tmpExt     = ".tmp"
	// headerSchema names the header line's format.
	headerSchema = "compatool.filestore/v1"
	// maxHeader bounds the header line; ids are at most 128 bytes each, so a
	// real header is far shorter.
	maxHeader = 1024
	copyBuf   = 256 << 10
	stripes   = 256
)

// Options configures a [Store]. The zero value is ready to use.
type Options struct {
	// Now is the clock that stamps [storage.TranscriptInfo.StoredAt]; nil
	// means time.Now.
	Now func() time.Time
	// Logger receives the store's own events (leftover temporary files
	// removed at Open); nil discards them.
	Logger *slog.Logger
	// MaxTranscriptBytes bounds the size of one transcript; 0 means
	// [DefaultMaxTranscriptBytes]. A larger Put fails with storage.ErrInvalid.
	MaxTranscriptBytes int64
}

// Store keeps transcripts as files under one root. It is safe for
// concurrent use. Call [Store.Close] to release the root.
type Store struct {
	root    string
	now     func() time.Time
	log     *slog.Logger
	max     int64
	unlock  func() error
	closed  atomic.Bool
	seed    maphash.Seed
	locks   [stripes]sync.RWMutex // per (org, run), striped
	bufPool sync.Pool
}

// Open opens the store at root, creating the directory (mode 0700) if it
// does not exist, and removes temporary files a crashed writer left behind.
// opts may be nil.
func Open(root string, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	if root == "" {
		return nil, errors.New("filestore: empty root; pass the directory that holds the transcripts")
	}
	s := &Store{root: filepath.Clean(root), now: opts.Now, log: opts.Logger, max: opts.MaxTranscriptBytes, seed: maphash.MakeSeed()}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.max <= 0 {
		s.max = DefaultMaxTranscriptBytes
	}
	s.bufPool.New = func() any { b := make([]byte, copyBuf); return &b }

	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return nil, fmt.Errorf("filestore: creating root: %w", err)
	}
	unlock, err := lockRoot(filepath.Join(s.root, lockName))
	if err != nil {
		return nil, err
	}
	s.unlock = unlock
	if err := s.init(); err != nil {
		unlock()
		return nil, err
	}
	return s, nil
}

func (s *Store) init() error {
	// Ids differ by case ("Run-1" and "run-1" are two runs), so a
	// case-folding filesystem would mix transcripts up.
	lower, upper := filepath.Join(s.root, lockName), filepath.Join(s.root, strings.ToUpper(lockName))
	if a, err := os.Lstat(lower); err == nil {
		if b, err := os.Lstat(upper); err == nil && os.SameFile(a, b) {
			return fmt.Errorf("filestore: root %q is on a case-insensitive filesystem, but ids differ by case; use a case-sensitive volume", s.root)
		}
	}
	for _, d := range []string{liveDir, archiveDir} {
		if err := os.Mkdir(filepath.Join(s.root, d), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("filestore: creating %s area: %w", d, err)
		}
	}
	if err := syncDir(s.root); err != nil {
		return err
	}
	removed := 0
	for _, d := range []string{liveDir, archiveDir} {
		orgs, err := os.ReadDir(filepath.Join(s.root, d))
		if err != nil {
			return fmt.Errorf("filestore: reading %s area: %w", d, err)
		}
		for _, org := range orgs {
			dir := filepath.Join(s.root, d, org.Name())
			names, err := readNames(dir)
			if err != nil {
				return err
			}
			for _, n := range names {
				if !strings.HasSuffix(n, tmpExt) {
					continue
				}
				if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("filestore: removing leftover temporary file: %w", err)
				}
				removed++
			}
		}
	}
	if removed > 0 {
		s.log.Info("filestore: removed temporary files left by an interrupted write", "root", s.root, "count", removed)
	}
	return nil
}

// Close releases the root's lock. Readers already returned by Get stay
// usable; every other call fails after Close.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	return s.unlock()
}

// header is the first line of every transcript file.
type header struct {
	Schema     string `json:"schema"`
	Org        string `json:"org"`
	Run        string `json:"run"`
	Submission string `json:"submission"`
	StoredAt   int64  `json:"stored_at_unix_ns"`
	Size       int64  `json:"size"`
}

func (h header) info(archived bool) storage.TranscriptInfo {
	return storage.TranscriptInfo{
		Run:        storage.RunID(h.Run),
		Submission: storage.SubmissionID(h.Submission),
		Org:        auth.OrgID(h.Org),
		Size:       h.Size,
		StoredAt:   time.Unix(0, h.StoredAt).UTC(),
		Archived:   archived,
	}
}

// readHeader reads and checks the header of the open file f, which should
// hold run of org, and returns it with its length in bytes.
func readHeader(f *os.File, org auth.OrgID, run storage.RunID) (header, int64, error) {
	buf := make([]byte, maxHeader)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return header{}, 0, fmt.Errorf("filestore: reading %s: %w", f.Name(), err)
	}
	i := bytes.IndexByte(buf[:n], '\n')
	var h header
	if i < 0 || json.Unmarshal(buf[:i], &h) != nil || h.Schema != headerSchema {
		return header{}, 0, fmt.Errorf("filestore: %s has no valid header; the file was not written by this package", f.Name())
	}
	if h.Org != string(org) || h.Run != string(run) {
		return header{}, 0, fmt.Errorf("filestore: %s holds run %q of org %q; the file was moved by hand", f.Name(), h.Run, h.Org)
	}
	if st, err := f.Stat(); err != nil {
		return header{}, 0, fmt.Errorf("filestore: %w", err)
	} else if st.Size() != int64(i+1)+h.Size {
		return header{}, 0, fmt.Errorf("filestore: %s is %d bytes but its header says %d; the file is damaged", f.Name(), st.Size(), int64(i+1)+h.Size)
	}
	return h, int64(i + 1), nil
}

// begin runs the checks every tenant call makes first and returns the
// scope's organisation.
func (s *Store) begin(ctx context.Context, method string, sc auth.Scope) (auth.OrgID, error) {
	if err := s.check(ctx, method); err != nil {
		return "", err
	}
	if err := storage.CheckScope(sc); err != nil {
		return "", fmt.Errorf("filestore: %s: %w", method, err)
	}
	org := sc.Org()
	if err := storage.ValidID(string(org)); err != nil {
		return "", fmt.Errorf("filestore: %s: organisation: %w", method, err)
	}
	if org == "." || org == ".." {
		return "", fmt.Errorf("filestore: %s: organisation id %q names a directory: %w", method, org, storage.ErrInvalid)
	}
	return org, nil
}

func (s *Store) check(ctx context.Context, method string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filestore: %s: %w", method, err)
	}
	if s.closed.Load() {
		return fmt.Errorf("filestore: %s: the store is closed", method)
	}
	return nil
}

// beginRun is begin plus the run id check.
func (s *Store) beginRun(ctx context.Context, method string, sc auth.Scope, run storage.RunID) (auth.OrgID, error) {
	org, err := s.begin(ctx, method, sc)
	if err != nil {
		return "", err
	}
	if err := storage.ValidID(string(run)); err != nil {
		return "", fmt.Errorf("filestore: %s: transcript: %w", method, err)
	}
	return org, nil
}

func (s *Store) path(area string, org auth.OrgID, run storage.RunID) string {
	return filepath.Join(s.root, area, string(org), string(run)+ext)
}

// lock returns the lock that serialises the renames of one transcript.
func (s *Store) lock(org auth.OrgID, run storage.RunID) *sync.RWMutex {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(string(org))
	h.WriteByte('/')
	h.WriteString(string(run))
	return &s.locks[h.Sum64()%stripes]
}

func notFound(run storage.RunID) error {
	return fmt.Errorf("filestore: transcript of run %q: %w", run, storage.ErrNotFound)
}

// orgDir returns the organisation's directory in area, creating it (and
// making its entry durable) if needed.
func (s *Store) orgDir(area string, org auth.OrgID) (string, error) {
	dir := filepath.Join(s.root, area, string(org))
	err := os.Mkdir(dir, 0o700)
	switch {
	case errors.Is(err, fs.ErrExist):
		return dir, nil
	case err != nil:
		return "", fmt.Errorf("filestore: creating %s: %w", dir, err)
	}
	return dir, syncDir(filepath.Join(s.root, area))
}

// Put stores t. The bytes go to a temporary file that is renamed into place
// only once it is whole and synced; a cancelled ctx or a failed write
// removes it.
func (s *Store) Put(ctx context.Context, sc auth.Scope, t storage.RedactedTranscript) error {
	org, err := s.begin(ctx, "Put", sc)
	if err != nil {
		return err
	}
	if t.IsZero() {
		return fmt.Errorf("filestore: transcript was not made by package redact: %w", storage.ErrInvalid)
	}
	if auth.OrgID(t.Org()) != org {
		return fmt.Errorf("filestore: transcript of org %q under a scope of org %q: %w", t.Org(), org, storage.ErrInvalid)
	}
	run := storage.RunID(t.RunID())
	if err := storage.ValidID(string(run)); err != nil {
		return fmt.Errorf("filestore: transcript run: %w", err)
	}
	if err := storage.ValidID(t.SubmissionID()); err != nil {
		return fmt.Errorf("filestore: transcript submission: %w", err)
	}
	if t.Size() > s.max {
		return fmt.Errorf("filestore: transcript of %d bytes exceeds the limit of %d; raise Options.MaxTranscriptBytes: %w", t.Size(), s.max, storage.ErrInvalid)
	}
	dir, err := s.orgDir(liveDir, org)
	if err != nil {
		return err
	}
	h, err := json.Marshal(header{Schema: headerSchema, Org: string(org), Run: string(run), Submission: t.SubmissionID(), StoredAt: s.now().UnixNano(), Size: t.Size()})
	if err != nil {
		return fmt.Errorf("filestore: encoding header: %w", err)
	}
	tmp, err := s.writeTemp(ctx, dir, append(h, '\n'), t)
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			os.Remove(tmp)
		}
	}()

	mu := s.lock(org, run)
	mu.Lock()
	// Checked under the lock so that a Put that returns ctx's error has
	// changed nothing.
	if err := ctx.Err(); err != nil {
		mu.Unlock()
		return fmt.Errorf("filestore: Put: %w", err)
	}
	err = os.Rename(tmp, s.path(liveDir, org, run))
	removed := false
	if err == nil {
		committed = true
		// The new live transcript replaces an archived one too.
		removed, err = remove(s.path(archiveDir, org, run))
	}
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("filestore: storing transcript of run %q: %w", run, err)
	}
	if removed {
		err = syncDir(filepath.Join(s.root, archiveDir, string(org)))
	}
	return errors.Join(syncDir(dir), err)
}

// writeTemp writes the header and t's document to a new temporary file in
// dir, synced, and returns its name.
func (s *Store) writeTemp(ctx context.Context, dir string, h []byte, t storage.RedactedTranscript) (name string, err error) {
	f, err := os.CreateTemp(dir, "*"+tmpExt)
	if err != nil {
		return "", fmt.Errorf("filestore: creating temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(h); err != nil {
		return "", fmt.Errorf("filestore: writing transcript: %w", err)
	}
	bp := s.bufPool.Get().(*[]byte)
	defer s.bufPool.Put(bp)
	// Hiding ReadFrom makes io.CopyBuffer use our buffer and our reader,
	// which checks ctx between chunks.
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, ctxReader{ctx, t.Open()}, *bp)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("filestore: Put: %w", ctx.Err())
		}
		return "", fmt.Errorf("filestore: writing transcript: %w", err)
	}
	if n != t.Size() {
		return "", fmt.Errorf("filestore: transcript reader gave %d bytes, its size is %d", n, t.Size())
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("filestore: syncing transcript: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("filestore: closing transcript: %w", err)
	}
	return f.Name(), nil
}

// ctxReader fails once ctx is done, so a long copy stops soon after a cancel.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// fileReader reads a transcript's document from its open file.
type fileReader struct {
	*io.SectionReader
	f *os.File
}

func (r fileReader) Close() error { return r.f.Close() }

// Get opens the live transcript of run, or else the archived one. The
// reader reads the open file, which stays whole if the transcript is
// replaced or deleted meanwhile (on Unix).
func (s *Store) Get(ctx context.Context, sc auth.Scope, run storage.RunID) (io.ReadCloser, storage.TranscriptInfo, error) {
	org, err := s.beginRun(ctx, "Get", sc, run)
	if err != nil {
		return nil, storage.TranscriptInfo{}, err
	}
	mu := s.lock(org, run)
	mu.RLock()
	archived := false
	f, err := os.Open(s.path(liveDir, org, run))
	if errors.Is(err, fs.ErrNotExist) {
		archived = true
		f, err = os.Open(s.path(archiveDir, org, run))
	}
	mu.RUnlock()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, storage.TranscriptInfo{}, notFound(run)
	}
	if err != nil {
		return nil, storage.TranscriptInfo{}, fmt.Errorf("filestore: opening transcript: %w", err)
	}
	h, off, err := readHeader(f, org, run)
	if err != nil {
		f.Close()
		return nil, storage.TranscriptInfo{}, err
	}
	return fileReader{io.NewSectionReader(f, off, h.Size), f}, h.info(archived), nil
}

// Delete removes the live and the archived transcript of run.
func (s *Store) Delete(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Delete", sc, run)
	if err != nil {
		return err
	}
	mu := s.lock(org, run)
	var errs []error
	mu.Lock()
	for _, area := range []string{liveDir, archiveDir} {
		removed, err := remove(s.path(area, org, run))
		if removed {
			err = syncDir(filepath.Join(s.root, area, string(org)))
		}
		errs = append(errs, err)
	}
	mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("filestore: deleting transcript of run %q: %w", run, err)
	}
	return nil
}

// Archive renames the live transcript into the archive area.
func (s *Store) Archive(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Archive", sc, run)
	if err != nil {
		return err
	}
	dir, err := s.orgDir(archiveDir, org)
	if err != nil {
		return err
	}
	return s.move(org, run, liveDir, dir)
}

// Restore renames the archived transcript back into the live area. If a
// live transcript exists, it wins and the archived copy is removed.
func (s *Store) Restore(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	org, err := s.beginRun(ctx, "Restore", sc, run)
	if err != nil {
		return err
	}
	dir, err := s.orgDir(liveDir, org)
	if err != nil {
		return err
	}
	return s.move(org, run, archiveDir, dir)
}

// move renames run's file from the area from to the directory dir of the
// other area. A run already there succeeds; a live copy always wins.
func (s *Store) move(org auth.OrgID, run storage.RunID, from, dir string) error {
	src, dst := s.path(from, org, run), filepath.Join(dir, string(run)+ext)
	mu := s.lock(org, run)
	mu.Lock()
	var err error
	if from == archiveDir && exists(dst) {
		_, err = remove(src)
	} else {
		err = os.Rename(src, dst)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
			if !exists(dst) {
				err = notFound(run)
			}
		}
	}
	mu.Unlock()
	if errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if err != nil {
		return fmt.Errorf("filestore: moving transcript of run %q: %w", run, err)
	}
	return errors.Join(syncDir(dir), syncDir(filepath.Dir(src)))
}

// StoredBefore lists live transcripts of every org stored before t. See the
// package documentation for its cost.
func (s *Store) StoredBefore(ctx context.Context, t time.Time, p storage.Page) ([]storage.TranscriptInfo, error) {
	if err := s.check(ctx, "StoredBefore"); err != nil {
		return nil, err
	}
	type candidate struct {
		run storage.RunID
		org auth.OrgID
	}
	live := filepath.Join(s.root, liveDir)
	orgs, err := readNames(live)
	if err != nil {
		return nil, err
	}
	var cands []candidate
	for _, org := range orgs {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("filestore: StoredBefore: %w", err)
		}
		names, err := readNames(filepath.Join(live, org))
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			run, ok := strings.CutSuffix(n, ext)
			if ok && run > p.After && storage.ValidID(run) == nil {
				cands = append(cands, candidate{storage.RunID(run), auth.OrgID(org)})
			}
		}
	}
	slices.SortFunc(cands, func(a, b candidate) int { return cmp.Or(cmp.Compare(a.run, b.run), cmp.Compare(a.org, b.org)) })
	before := t.UnixNano()
	out := []storage.TranscriptInfo{}
	for _, c := range cands {
		if len(out) == p.N() {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("filestore: StoredBefore: %w", err)
		}
		h, err := s.stat(c.org, c.run)
		if errors.Is(err, fs.ErrNotExist) {
			continue // archived or deleted since the names were read
		}
		if err != nil {
			return nil, err
		}
		if h.StoredAt < before {
			out = append(out, h.info(false))
		}
	}
	return out, nil
}

// stat reads the header of a live transcript.
func (s *Store) stat(org auth.OrgID, run storage.RunID) (header, error) {
	f, err := os.Open(s.path(liveDir, org, run))
	if err != nil {
		return header{}, err
	}
	defer f.Close()
	h, _, err := readHeader(f, org, run)
	return h, err
}

// readNames returns the names in dir, unsorted; a missing dir, or a file
// that is not a directory, has none.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("filestore: %w", err)
	} else if !st.IsDir() {
		return nil, nil
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("filestore: reading %s: %w", dir, err)
	}
	return names, nil
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

// remove removes name and reports whether it existed.
func remove(name string) (bool, error) {
	err := os.Remove(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("filestore: syncing directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("filestore: syncing directory %s: %w", dir, err)
	}
	return nil
}
