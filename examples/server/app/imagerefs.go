package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

// imageRefs records, per image the sandbox holds, the organisations that
// have (or may have) a submission of it, so that an image leaves the
// sandbox when the last submission of it, of any organisation, is erased
// (P4, P14). The metadata store answers per organisation only, so it cannot
// tell by itself whether another organisation still uses an image.
//
// A record may name an organisation that no longer uses the image (a
// submission that failed to be stored, a crash); releaseImage checks each
// named organisation's submissions, so such a name only delays a removal.
// No record at all (an image imported by a server that kept none) means
// unknown users: that image is never removed.
//
// Each record is changed, and the store writes it guards (import and
// Submit; Erase and the removal) are made, with the image's lock held.
type imageRefs struct {
	dir   string // <DataDir>/image-refs: one JSON file per image, named by its hex digest
	locks keyedLock
}

// imageRecord is the file of one image.
type imageRecord struct {
	Orgs []auth.OrgID `json:"orgs"`
	// Check says a release began and did not finish: the next start
	// finishes it.
	Check bool `json:"check,omitempty"`
}

func openImageRefs(dataDir string) (*imageRefs, error) {
	dir := filepath.Join(dataDir, "image-refs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("app: image records: %w", err)
	}
	return &imageRefs{dir: dir}, nil
}

// path returns the record file of image, an image ID that matches
// imageIDRe.
func (r *imageRefs) path(image string) string {
	return filepath.Join(r.dir, strings.TrimPrefix(image, "sha256:"))
}

// lock takes image's lock; the caller calls unlock.
func (r *imageRefs) lock(ctx context.Context, image string) (unlock func(), err error) {
	return r.locks.lock(ctx, image)
}

// load returns image's record; ok is false if there is none.
func (r *imageRefs) load(image string) (rec imageRecord, ok bool, err error) {
	if !imageIDRe.MatchString(image) {
		return rec, false, nil
	}
	b, err := os.ReadFile(r.path(image))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("image record of %s: %w", image, err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, false, fmt.Errorf("image record of %s: %w", image, err)
	}
	return rec, true, nil
}

func (r *imageRefs) store(image string, rec imageRecord) error {
	if !imageIDRe.MatchString(image) {
		return fmt.Errorf("image record: %q is not an image ID", image)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(r.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("image record of %s: %w", image, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), r.path(image))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("image record of %s: %w", image, err)
	}
	return nil
}

// add records that org uses image. The caller holds image's lock.
func (r *imageRefs) add(image string, org auth.OrgID) error {
	rec, _, err := r.load(image)
	if err != nil {
		return err
	}
	if slices.Contains(rec.Orgs, org) {
		return nil
	}
	rec.Orgs = append(rec.Orgs, org)
	return r.store(image, rec)
}

// unfinished returns the images whose release did not finish.
func (r *imageRefs) unfinished() ([]string, error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		image := "sha256:" + e.Name()
		if !imageIDRe.MatchString(image) {
			continue
		}
		if rec, ok, err := r.load(image); err == nil && ok && rec.Check {
			out = append(out, image)
		}
	}
	return out, nil
}

// useImage records that the scope's organisation is about to submit image.
// The caller holds image's lock.
func (a *App) useImage(s auth.Scope, image string) error {
	if err := a.refs.add(image, s.Org()); err != nil {
		return fmt.Errorf("app: %w", err)
	}
	return nil
}

// releaseImage removes image from the sandbox unless an organisation named
// in its record still has a submission of it. The caller holds image's
// lock, taken before the erasure or failed submission that may have made
// the image unused.
func (a *App) releaseImage(ctx context.Context, image string) error {
	rec, ok, err := a.refs.load(image)
	if err != nil || !ok {
		return err
	}
	if !rec.Check {
		rec.Check = true
		if err := a.refs.store(image, rec); err != nil {
			return err
		}
	}
	var users []auth.OrgID
	for _, org := range rec.Orgs {
		// Platform housekeeping, not a tenant read: nothing of the
		// organisation's data leaves this function.
		uses, err := a.hasSubmissionOf(ctx, auth.InternalScope(org), image)
		if err != nil {
			return err
		}
		if uses {
			users = append(users, org)
		}
	}
	if len(users) > 0 {
		return a.refs.store(image, imageRecord{Orgs: users})
	}
	if err := a.importer.Remove(ctx, image); err != nil {
		return fmt.Errorf("remove image %s: %w", image, err)
	}
	if err := os.Remove(a.refs.path(image)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	a.log.InfoContext(ctx, "image removed: no submission uses it", "image", image)
	return nil
}

// finishReleases finishes the releases a previous process began; a failure
// is logged, and tried again at the next start.
func (a *App) finishReleases(ctx context.Context) {
	images, err := a.refs.unfinished()
	if err != nil {
		a.log.Error("read image records", "err", err)
		return
	}
	for _, image := range images {
		unlock, err := a.refs.lock(ctx, image)
		if err != nil {
			return
		}
		if err := a.releaseImage(ctx, image); err != nil {
			a.log.Error("finish removing an unused image; the next start tries again", "image", image, "err", err)
		}
		unlock()
	}
}

// hasSubmissionOf reports whether the scope's organisation has a
// submission of image.
func (a *App) hasSubmissionOf(ctx context.Context, s auth.Scope, image string) (bool, error) {
	p := storage.Page{Limit: storage.MaxPageLimit}
	for {
		subs, err := a.meta.ListSubmissions(ctx, s, p)
		if err != nil {
			return false, err
		}
		if slices.ContainsFunc(subs, func(sub storage.Submission) bool { return sub.Image == image }) {
			return true, nil
		}
		if len(subs) < p.N() {
			return false, nil
		}
		p.After = string(subs[len(subs)-1].ID)
	}
}

// keyedLock is a mutex per key, made on first use and dropped when no one
// holds or waits for it.
type keyedLock struct {
	mu   sync.Mutex
	keys map[string]*keyedEntry
}

type keyedEntry struct {
	sem   chan struct{} // holds a token while locked
	users int           // holders and waiters
}

func (k *keyedLock) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.keys == nil {
		k.keys = map[string]*keyedEntry{}
	}
	e := k.keys[key]
	if e == nil {
		e = &keyedEntry{sem: make(chan struct{}, 1)}
		k.keys[key] = e
	}
	e.users++
	k.mu.Unlock()
	select {
	case e.sem <- struct{}{}:
		return func() { <-e.sem; k.leave(key, e) }, nil
	case <-ctx.Done():
		k.leave(key, e)
		return nil, ctx.Err()
	}
}

func (k *keyedLock) leave(key string, e *keyedEntry) {
	k.mu.Lock()
	if e.users--; e.users == 0 {
		delete(k.keys, key)
	}
	k.mu.Unlock()
}
