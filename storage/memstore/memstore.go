// Package memstore is an in-memory [storage.MetadataStore] and
// [storage.TranscriptStore], for tests and for examples that need no disk.
//
// It keeps the promises of package storage (P4, P5, P6, P9, P11, P12 of
// DESIGN.md) the same way every driver does, and passes the conformance suite
// in storagetest: scopes are checked on every tenant call, another
// organisation's records are answered as absent, erasure cascades, and the
// audit log is append-only. Records and bytes are copied on the way in and on
// the way out, so neither the caller nor the store can change the other's
// copy.
//
// Transcripts are keyed by organisation and run id, so a Put under one
// organisation's scope never touches another organisation's transcript.
//
// # Faults
//
// [Store.FailNext] makes the next call of a named method fail with a given
// error before it does anything, for testing how callers handle a store that
// fails.
package memstore

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

var (
	_ storage.MetadataStore   = (*Store)(nil)
	_ storage.TranscriptStore = (*Store)(nil)
)

// DefaultMaxTranscriptBytes is the transcript size limit when
// [Options.MaxTranscriptBytes] is zero.
const DefaultMaxTranscriptBytes = 1 << 30

// Options configures a [Store]. The zero value is ready to use.
type Options struct {
	// Now is the clock that stamps [storage.TranscriptInfo.StoredAt]; nil
	// means time.Now.
	Now func() time.Time
	// MaxTranscriptBytes bounds the size of one transcript; 0 means
	// [DefaultMaxTranscriptBytes]. A larger Put fails with storage.ErrInvalid.
	MaxTranscriptBytes int64
}

// Store is an in-memory metadata and transcript store. It is safe for
// concurrent use. The zero value is not usable; call [New].
type Store struct {
	now           func() time.Time
	maxTranscript int64

	mu          sync.RWMutex
	tasks       map[storage.TaskID]storage.Task
	subs        map[storage.SubmissionID]storage.Submission
	orgSubs     map[auth.OrgID]map[storage.SubmissionID]struct{}
	runs        map[storage.RunID]storage.Run
	subRuns     map[storage.SubmissionID][]storage.RunID
	audit       map[auth.OrgID][]storage.AuditRecord // sorted by At, then ID
	auditIDs    map[string]struct{}
	transcripts map[transcriptKey]transcript

	faultMu sync.Mutex
	faults  map[string]error
}

type transcriptKey struct {
	org auth.OrgID
	run storage.RunID
}

type transcript struct {
	doc  []byte // never written after Put, so readers may share it
	info storage.TranscriptInfo
}

// New returns an empty store. opts may be nil.
func New(opts *Options) *Store {
	if opts == nil {
		opts = &Options{}
	}
	s := &Store{
		now:           opts.Now,
		maxTranscript: opts.MaxTranscriptBytes,
		tasks:         map[storage.TaskID]storage.Task{},
		subs:          map[storage.SubmissionID]storage.Submission{},
		orgSubs:       map[auth.OrgID]map[storage.SubmissionID]struct{}{},
		runs:          map[storage.RunID]storage.Run{},
		subRuns:       map[storage.SubmissionID][]storage.RunID{},
		audit:         map[auth.OrgID][]storage.AuditRecord{},
		auditIDs:      map[string]struct{}{},
		transcripts:   map[transcriptKey]transcript{},
		faults:        map[string]error{},
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxTranscript <= 0 {
		s.maxTranscript = DefaultMaxTranscriptBytes
	}
	return s
}

// methods are the names FailNext accepts.
var methods = []string{
	"PutTask", "GetTask", "ListTasks",
	"CreateSubmission", "GetSubmission", "ListSubmissions", "SetPublic", "DeleteSubmission",
	"GetRun", "ListRuns", "UpdateRun", "RunsInState", "PublicRun",
	"AppendAudit", "ListAudit",
	"Put", "Get", "Delete", "Archive", "Restore", "StoredBefore",
}

// FailNext makes the next call of method (a method name of
// [storage.MetadataStore] or [storage.TranscriptStore], e.g.
// "CreateSubmission" or "Put") return err without reading or writing
// anything. A call whose ctx is already done fails with the ctx error and
// leaves the fault pending. A nil err clears a pending fault. Each fault
// fires once; a second FailNext for the same method before it fires replaces
// the first. FailNext panics on a name that is not such a method, so a typo
// cannot make a failure test pass vacuously.
func (s *Store) FailNext(method string, err error) {
	if !slices.Contains(methods, method) {
		panic(fmt.Sprintf("memstore: FailNext(%q): no such store method; use one of %s", method, strings.Join(methods, ", ")))
	}
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if err == nil {
		delete(s.faults, method)
		return
	}
	s.faults[method] = err
}

// begin runs the checks that come before any work: ctx, then faults.
func (s *Store) begin(ctx context.Context, method string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: %s: %w", method, err)
	}
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	if err, ok := s.faults[method]; ok {
		delete(s.faults, method)
		return err
	}
	return nil
}

// beginScoped is begin plus the scope check of tenant methods.
func (s *Store) beginScoped(ctx context.Context, method string, sc auth.Scope) error {
	if err := s.begin(ctx, method); err != nil {
		return err
	}
	if err := storage.CheckScope(sc); err != nil {
		return fmt.Errorf("memstore: %s: %w", method, err)
	}
	return nil
}

// Tasks.

func (s *Store) PutTask(ctx context.Context, t storage.Task) error {
	if err := s.begin(ctx, "PutTask"); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("memstore: %w", err)
	}
	t = cloneTask(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tasks[t.ID] = t
	return nil
}

func (s *Store) GetTask(ctx context.Context, id storage.TaskID) (storage.Task, error) {
	if err := s.begin(ctx, "GetTask"); err != nil {
		return storage.Task{}, err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return storage.Task{}, fmt.Errorf("memstore: task: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tasks[id]
	if !ok {
		return storage.Task{}, fmt.Errorf("memstore: task %q: %w", id, storage.ErrNotFound)
	}
	return cloneTask(t), nil
}

func (s *Store) ListTasks(ctx context.Context) ([]storage.Task, error) {
	if err := s.begin(ctx, "ListTasks"); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]storage.Task, 0, len(s.tasks))
	for _, id := range slices.Sorted(maps.Keys(s.tasks)) {
		out = append(out, cloneTask(s.tasks[id]))
	}
	return out, nil
}

// Submissions.

func (s *Store) CreateSubmission(ctx context.Context, sc auth.Scope, sub storage.Submission, runs []storage.Run) error {
	if err := s.beginScoped(ctx, "CreateSubmission", sc); err != nil {
		return err
	}
	if err := validSubmission(sc, sub, runs); err != nil {
		return err
	}
	sub = cloneSubmission(sub)
	ids := make([]storage.RunID, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	slices.Sort(ids)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[sub.ID]; ok {
		return fmt.Errorf("memstore: submission %q: %w", sub.ID, storage.ErrAlreadyExists)
	}
	for _, id := range ids {
		if _, ok := s.runs[id]; ok {
			return fmt.Errorf("memstore: run %q: %w", id, storage.ErrAlreadyExists)
		}
	}
	s.subs[sub.ID] = sub
	if s.orgSubs[sub.Org] == nil {
		s.orgSubs[sub.Org] = map[storage.SubmissionID]struct{}{}
	}
	s.orgSubs[sub.Org][sub.ID] = struct{}{}
	for _, r := range runs {
		s.runs[r.ID] = cloneRun(r)
	}
	s.subRuns[sub.ID] = ids
	return nil
}

// submission returns the scope's submission id; callers hold s.mu.
func (s *Store) submission(sc auth.Scope, id storage.SubmissionID) (storage.Submission, error) {
	sub, ok := s.subs[id]
	if !ok || sub.Org != sc.Org() {
		return storage.Submission{}, fmt.Errorf("memstore: submission %q: %w", id, storage.ErrNotFound)
	}
	return sub, nil
}

func (s *Store) GetSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) (storage.Submission, error) {
	if err := s.beginScoped(ctx, "GetSubmission", sc); err != nil {
		return storage.Submission{}, err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return storage.Submission{}, fmt.Errorf("memstore: submission: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	sub, err := s.submission(sc, id)
	return cloneSubmission(sub), err
}

func (s *Store) ListSubmissions(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.Submission, error) {
	if err := s.beginScoped(ctx, "ListSubmissions", sc); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := pageIDs(maps.Keys(s.orgSubs[sc.Org()]), p)
	out := make([]storage.Submission, len(ids))
	for i, id := range ids {
		out[i] = cloneSubmission(s.subs[id])
	}
	return out, nil
}

func (s *Store) SetPublic(ctx context.Context, sc auth.Scope, id storage.SubmissionID, public bool) error {
	if err := s.beginScoped(ctx, "SetPublic", sc); err != nil {
		return err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return fmt.Errorf("memstore: submission: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.submission(sc, id)
	if err != nil {
		return err
	}
	sub.Public = public
	s.subs[id] = sub
	return nil
}

func (s *Store) DeleteSubmission(ctx context.Context, sc auth.Scope, id storage.SubmissionID) error {
	if err := s.beginScoped(ctx, "DeleteSubmission", sc); err != nil {
		return err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return fmt.Errorf("memstore: submission: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, err := s.submission(sc, id)
	if err != nil {
		return err
	}
	for _, r := range s.subRuns[id] {
		delete(s.runs, r)
	}
	delete(s.subRuns, id)
	delete(s.subs, id)
	delete(s.orgSubs[sub.Org], id)
	if len(s.orgSubs[sub.Org]) == 0 {
		delete(s.orgSubs, sub.Org)
	}
	return nil
}

// Runs.

// run returns the scope's run id; callers hold s.mu.
func (s *Store) run(sc auth.Scope, id storage.RunID) (storage.Run, error) {
	r, ok := s.runs[id]
	if !ok || r.Org != sc.Org() {
		return storage.Run{}, fmt.Errorf("memstore: run %q: %w", id, storage.ErrNotFound)
	}
	return r, nil
}

func (s *Store) GetRun(ctx context.Context, sc auth.Scope, id storage.RunID) (storage.Run, error) {
	if err := s.beginScoped(ctx, "GetRun", sc); err != nil {
		return storage.Run{}, err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return storage.Run{}, fmt.Errorf("memstore: run: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, err := s.run(sc, id)
	return cloneRun(r), err
}

func (s *Store) ListRuns(ctx context.Context, sc auth.Scope, sub storage.SubmissionID, p storage.Page) ([]storage.Run, error) {
	if err := s.beginScoped(ctx, "ListRuns", sc); err != nil {
		return nil, err
	}
	if err := storage.ValidID(string(sub)); err != nil {
		return nil, fmt.Errorf("memstore: submission: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, err := s.submission(sc, sub); err != nil {
		return nil, err
	}
	ids := s.subRuns[sub] // sorted
	i, _ := slices.BinarySearch(ids, storage.RunID(p.After))
	if i < len(ids) && p.After != "" && ids[i] == storage.RunID(p.After) {
		i++
	}
	ids = ids[i:min(len(ids), i+p.N())]
	out := make([]storage.Run, len(ids))
	for i, id := range ids {
		out[i] = cloneRun(s.runs[id])
	}
	return out, nil
}

func (s *Store) UpdateRun(ctx context.Context, sc auth.Scope, r storage.Run) error {
	if err := s.beginScoped(ctx, "UpdateRun", sc); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("memstore: %w", err)
	}
	r = cloneRun(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	old, err := s.run(sc, r.ID)
	if err != nil {
		return err
	}
	if r.Org != old.Org || r.Submission != old.Submission || r.Task != old.Task {
		return fmt.Errorf("memstore: run %q: UpdateRun may not change Org, Submission or Task; pass the run as GetRun returned it: %w", r.ID, storage.ErrInvalid)
	}
	s.runs[r.ID] = r
	return nil
}

func (s *Store) RunsInState(ctx context.Context, st storage.RunState, p storage.Page) ([]storage.Run, error) {
	if err := s.begin(ctx, "RunsInState"); err != nil {
		return nil, err
	}
	if !st.Valid() {
		return nil, fmt.Errorf("memstore: unknown run state %q: %w", st, storage.ErrInvalid)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ids []storage.RunID
	for id, r := range s.runs {
		if r.State == st && string(id) > p.After {
			ids = append(ids, id)
		}
	}
	ids = pageIDs(slices.Values(ids), storage.Page{Limit: p.Limit})
	out := make([]storage.Run, len(ids))
	for i, id := range ids {
		out[i] = cloneRun(s.runs[id])
	}
	return out, nil
}

func (s *Store) PublicRun(ctx context.Context, id storage.RunID) (storage.Run, error) {
	if err := s.begin(ctx, "PublicRun"); err != nil {
		return storage.Run{}, err
	}
	if err := storage.ValidID(string(id)); err != nil {
		return storage.Run{}, fmt.Errorf("memstore: run: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.runs[id]
	if !ok || !s.subs[r.Submission].Public {
		return storage.Run{}, fmt.Errorf("memstore: public run %q: %w", id, storage.ErrNotFound)
	}
	return cloneRun(r), nil
}

// Audit.

func (s *Store) AppendAudit(ctx context.Context, r storage.AuditRecord) error {
	if err := s.begin(ctx, "AppendAudit"); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("memstore: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.auditIDs[r.ID]; ok {
		return fmt.Errorf("memstore: audit record %q: records cannot be replaced: %w", r.ID, storage.ErrAlreadyExists)
	}
	s.auditIDs[r.ID] = struct{}{}
	recs := s.audit[r.Org]
	i := sort.Search(len(recs), func(i int) bool { return auditCmp(recs[i], r) > 0 })
	s.audit[r.Org] = slices.Insert(recs, i, r)
	return nil
}

func auditCmp(a, b storage.AuditRecord) int {
	if c := a.At.Compare(b.At); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

// ListAudit pages by record id: After names the last record of the previous
// page, and an After that names no record of the org yields an empty page.
func (s *Store) ListAudit(ctx context.Context, sc auth.Scope, p storage.Page) ([]storage.AuditRecord, error) {
	if err := s.beginScoped(ctx, "ListAudit", sc); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	recs := s.audit[sc.Org()]
	if p.After != "" {
		i := slices.IndexFunc(recs, func(r storage.AuditRecord) bool { return r.ID == p.After })
		if i < 0 {
			return []storage.AuditRecord{}, nil
		}
		recs = recs[i+1:]
	}
	return slices.Clone(recs[:min(len(recs), p.N())]), nil
}

// Transcripts.

func (s *Store) Put(ctx context.Context, sc auth.Scope, t storage.RedactedTranscript) error {
	if err := s.beginScoped(ctx, "Put", sc); err != nil {
		return err
	}
	if t.IsZero() {
		return fmt.Errorf("memstore: transcript was not made by package redact: %w", storage.ErrInvalid)
	}
	if auth.OrgID(t.Org()) != sc.Org() {
		return fmt.Errorf("memstore: transcript of org %q under a scope of org %q: %w", t.Org(), sc.Org(), storage.ErrInvalid)
	}
	if err := storage.ValidID(t.RunID()); err != nil {
		return fmt.Errorf("memstore: transcript run: %w", err)
	}
	if err := storage.ValidID(t.SubmissionID()); err != nil {
		return fmt.Errorf("memstore: transcript submission: %w", err)
	}
	if t.Size() > s.maxTranscript {
		return fmt.Errorf("memstore: transcript of %d bytes exceeds the limit of %d; raise Options.MaxTranscriptBytes: %w", t.Size(), s.maxTranscript, storage.ErrInvalid)
	}
	doc := make([]byte, t.Size())
	if _, err := io.ReadFull(t.Open(), doc); err != nil {
		return fmt.Errorf("memstore: reading transcript: %w", err)
	}
	// Copying a large transcript takes a while; honour a cancel that came
	// meanwhile rather than store what the caller gave up on.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: Put: %w", err)
	}
	info := storage.TranscriptInfo{
		Run:        storage.RunID(t.RunID()),
		Submission: storage.SubmissionID(t.SubmissionID()),
		Org:        sc.Org(),
		Size:       t.Size(),
		StoredAt:   s.now().Round(0),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.transcripts[transcriptKey{sc.Org(), info.Run}] = transcript{doc: doc, info: info}
	return nil
}

func (s *Store) Get(ctx context.Context, sc auth.Scope, run storage.RunID) (io.ReadCloser, storage.TranscriptInfo, error) {
	if err := s.beginScoped(ctx, "Get", sc); err != nil {
		return nil, storage.TranscriptInfo{}, err
	}
	if err := storage.ValidID(string(run)); err != nil {
		return nil, storage.TranscriptInfo{}, fmt.Errorf("memstore: transcript: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.transcripts[transcriptKey{sc.Org(), run}]
	if !ok {
		return nil, storage.TranscriptInfo{}, fmt.Errorf("memstore: transcript of run %q: %w", run, storage.ErrNotFound)
	}
	// A reader cannot write to doc, and Put replaces doc rather than
	// changing it, so sharing it is a copy in effect.
	return io.NopCloser(bytes.NewReader(t.doc)), t.info, nil
}

func (s *Store) Delete(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	if err := s.beginScoped(ctx, "Delete", sc); err != nil {
		return err
	}
	if err := storage.ValidID(string(run)); err != nil {
		return fmt.Errorf("memstore: transcript: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.transcripts, transcriptKey{sc.Org(), run})
	return nil
}

func (s *Store) Archive(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	return s.setArchived(ctx, "Archive", sc, run, true)
}

func (s *Store) Restore(ctx context.Context, sc auth.Scope, run storage.RunID) error {
	return s.setArchived(ctx, "Restore", sc, run, false)
}

func (s *Store) setArchived(ctx context.Context, method string, sc auth.Scope, run storage.RunID, archived bool) error {
	if err := s.beginScoped(ctx, method, sc); err != nil {
		return err
	}
	if err := storage.ValidID(string(run)); err != nil {
		return fmt.Errorf("memstore: transcript: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := transcriptKey{sc.Org(), run}
	t, ok := s.transcripts[k]
	if !ok {
		return fmt.Errorf("memstore: transcript of run %q: %w", run, storage.ErrNotFound)
	}
	t.info.Archived = archived
	s.transcripts[k] = t
	return nil
}

func (s *Store) StoredBefore(ctx context.Context, before time.Time, p storage.Page) ([]storage.TranscriptInfo, error) {
	if err := s.begin(ctx, "StoredBefore"); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []storage.TranscriptInfo
	for _, t := range s.transcripts {
		if !t.info.Archived && t.info.StoredAt.Before(before) && string(t.info.Run) > p.After {
			out = append(out, t.info)
		}
	}
	slices.SortFunc(out, func(a, b storage.TranscriptInfo) int {
		return cmp.Or(cmp.Compare(a.Run, b.Run), cmp.Compare(a.Org, b.Org))
	})
	return out[:min(len(out), p.N())], nil
}
