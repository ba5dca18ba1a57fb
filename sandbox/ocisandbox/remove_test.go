package ocisandbox_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestRemoveImage removes images alone, alongside an image with the same
// layers (in another Sandbox sharing the cache), and while a run of them is
// live. A removed image does not start, images sharing its layers still
// run, and once no run uses it nothing of it is left in the cache.
func TestRemoveImage(t *testing.T) {
	cache := filepath.Join(traversableDir(t), "cache")
	a := newSandbox(t, "runc", &ocisandbox.Options{CacheDir: cache})
	b := newSandbox(t, "runc", &ocisandbox.Options{CacheDir: cache})
	gw := sandboxtest.NewGateway(t)
	const marker = "only-in-the-unique-layer-7f3a"
	unique, err := testimage.Layer(testimage.File{Name: "unique", Mode: 0o644, Data: []byte(marker)})
	if err != nil {
		t.Fatal(err)
	}
	image := func(p sandboxtest.Program, layers ...v1.Layer) v1.Image {
		img, err := testimage.Image(p, layers...)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	// x and y differ in their config only, so they share a root
	// filesystem; z shares x's first layer.
	x := image(sandboxtest.Program{{Op: "read_file", Path: "/unique"}, {Op: "heartbeat", Text: "x"}}, agentLayer(t), unique)
	y := image(sandboxtest.Program{{Op: "read_file", Path: "/unique"}, {Op: "print", Text: "y\n"}}, agentLayer(t), unique)
	z := image(sandboxtest.Program{{Op: "read_file", Path: "/unique"}}, agentLayer(t))
	imp := func(s *ocisandbox.Sandbox, img v1.Image) string {
		id, err := s.Import(t.Context(), img)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	remove := func(s *ocisandbox.Sandbox, id string) {
		t.Helper()
		if err := s.RemoveImage(t.Context(), id); err != nil {
			t.Fatalf("RemoveImage(%s): %v", id, err)
		}
	}
	wantGone := func(s *ocisandbox.Sandbox, id string) {
		t.Helper()
		if inst, err := s.Start(t.Context(), gw.Spec("removed", id)); !errors.Is(err, sandbox.ErrImageNotFound) {
			if err == nil {
				inst.Destroy(context.Background())
			}
			t.Errorf("Start of removed image %s = %v, want ErrImageNotFound", id, err)
		}
	}
	// runX runs x until its heartbeat, and checks it saw the unique layer.
	runX := func(id string) {
		t.Helper()
		inst, err := a.Start(t.Context(), gw.Spec("x", id))
		if err != nil {
			t.Fatal(err)
		}
		awaitBeats(t, gw, "x", gw.Beats("x")+1, inst)
		if err := inst.Destroy(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := string(inst.Logs().Stdout); got != "present /unique "+marker+"\n" {
			t.Errorf("x printed %q", got)
		}
	}
	expect := func(s *ocisandbox.Sandbox, id, want string) {
		t.Helper()
		exit, logs := runToEnd(t, s, gw.Spec("run", id))
		if exit.Code != 0 || string(logs.Stdout) != want {
			t.Errorf("run of %s: exit %+v, stdout %q; want %q (stderr %s)", id, exit, logs.Stdout, want, logs.Stderr)
		}
	}

	zID := imp(a, z)
	withoutX := cacheState(t, cache)

	t.Run("alone", func(t *testing.T) {
		xID := imp(a, x)
		runX(xID)
		if cacheState(t, cache).equal(withoutX) {
			t.Fatal("importing x changed nothing in the cache; the test proves nothing")
		}
		remove(a, xID)
		wantGone(a, xID)
		wantNothingOf(t, cache, withoutX, marker)
		expect(a, zID, "absent /unique\n")
	})

	t.Run("same layers as another image", func(t *testing.T) {
		xID, yID := imp(a, x), imp(b, y)
		remove(a, xID)
		wantGone(a, xID)
		wantGone(b, xID)
		expect(b, yID, "present /unique "+marker+"\ny\n")
		remove(b, yID)
		wantGone(b, yID)
		wantNothingOf(t, cache, withoutX, marker)
		expect(a, zID, "absent /unique\n")
	})

	t.Run("while a run uses it", func(t *testing.T) {
		xID := imp(a, x)
		inst, err := a.Start(t.Context(), gw.Spec("live", xID))
		if err != nil {
			t.Fatal(err)
		}
		defer inst.Destroy(context.Background())
		awaitBeats(t, gw, "x", gw.Beats("x")+1, inst)
		remove(a, xID)
		wantGone(a, xID)
		// The live run keeps its files and goes on.
		if cacheState(t, cache).equal(withoutX) {
			t.Errorf("RemoveImage took the root filesystem from under a live run")
		}
		awaitBeats(t, gw, "x", gw.Beats("x")+2, inst)
		if err := inst.Destroy(context.Background()); err != nil {
			t.Fatal(err)
		}
		wantNothingOf(t, cache, withoutX, marker)
	})

	t.Run("idempotent", func(t *testing.T) {
		xID := imp(a, x)
		remove(a, xID)
		remove(a, xID)
		remove(b, xID)
		remove(a, "sha256:"+strings.Repeat("0", 64))
		if err := a.RemoveImage(t.Context(), "../../etc/passwd"); !errors.Is(err, sandbox.ErrImageNotFound) {
			t.Errorf("RemoveImage of a malformed id = %v, want ErrImageNotFound", err)
		}
		wantNothingOf(t, cache, withoutX, marker)
	})

	t.Run("imported again", func(t *testing.T) {
		xID := imp(a, x)
		runX(xID)
		remove(a, xID)
		runX(imp(a, x))
	})
}

// cacheContents is what a cache holds: the entries of its images and
// rootfs directories.
type cacheContents []string

func cacheState(t *testing.T, cache string) cacheContents {
	t.Helper()
	var out cacheContents
	for _, d := range []string{"images", "rootfs"} {
		entries, err := os.ReadDir(filepath.Join(cache, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, d+"/"+e.Name())
		}
	}
	return out
}

func (c cacheContents) equal(o cacheContents) bool { return slices.Equal(c, o) }

// wantNothingOf fails the test unless the cache holds what it held in
// before, and no file holds marker.
func wantNothingOf(t *testing.T, cache string, before cacheContents, marker string) {
	t.Helper()
	if diff := cmp.Diff(before, cacheState(t, cache)); diff != "" {
		t.Errorf("cache after removal (-before the import +now):\n%s", diff)
	}
	err := filepath.WalkDir(cache, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s holds a file of the removed image's unique layer", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
