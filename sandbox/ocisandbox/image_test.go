package ocisandbox_test

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage"
	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestMaliciousLayers imports layers that try to write outside the root
// filesystem; each import must fail and leave the host file untouched.
func TestMaliciousLayers(t *testing.T) {
	s := newSandbox(t, "runc", nil)
	outside := t.TempDir()
	for _, tc := range []struct {
		name  string
		files []testimage.File
	}{
		{"dot-dot entry", []testimage.File{{Name: "../../../../../../" + outside + "/pwned", Data: []byte("x")}}},
		{"absolute symlink then write through it", []testimage.File{
			{Name: "escape", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "escape/pwned", Data: []byte("x")}}},
		{"relative symlink climbing out", []testimage.File{
			{Name: "up", Type: tar.TypeSymlink, Linkname: "../../../../../../../../" + outside},
			{Name: "up/pwned", Data: []byte("x")}}},
		{"hard link to a host file", []testimage.File{{Name: "pwned", Type: tar.TypeLink, Linkname: "../../../../../../etc/passwd"}}},
		{"whiteout through a symlink", []testimage.File{
			{Name: "wh", Type: tar.TypeSymlink, Linkname: outside},
			{Name: "wh/.wh.victim"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			layer, err := testimage.Layer(tc.files...)
			if err != nil {
				t.Fatal(err)
			}
			img, err := testimage.Image(sandboxtest.Program{}, layer)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Import(t.Context(), img); err == nil || !strings.Contains(err.Error(), "unsafe layer entry") {
				t.Errorf("Import = %v, want an unsafe layer entry error", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "pwned")); !os.IsNotExist(err) {
				t.Errorf("the layer wrote outside the root: stat pwned = %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(outside, "victim")); err != nil || string(b) != "keep" {
				t.Errorf("host file changed: %q, %v", b, err)
			}
		})
	}
}

// TestLayers checks whiteouts, opaque directories, links and the image
// config (user, working dir, env) in a real run.
func TestLayers(t *testing.T) {
	s := newSandbox(t, "runc", nil)
	gw := sandboxtest.NewGateway(t)
	lower, err := testimage.Layer(
		testimage.File{Name: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0::/root:/bin/sh\nagent:x:1000:1000::/home:/bin/sh\n")},
		testimage.File{Name: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nagents:x:1001:\n")},
		testimage.File{Name: "work/", Mode: 0o777, Type: tar.TypeDir},
		testimage.File{Name: "gone", Mode: 0o644, Data: []byte("lower")},
		testimage.File{Name: "opaque/old", Mode: 0o644, Data: []byte("lower")},
		testimage.File{Name: "kept", Mode: 0o644, Data: []byte("lower")},
		testimage.File{Name: "hard", Type: tar.TypeLink, Linkname: "kept"},
		testimage.File{Name: "soft", Type: tar.TypeSymlink, Linkname: "/kept"},
	)
	if err != nil {
		t.Fatal(err)
	}
	upper, err := testimage.Layer(
		testimage.File{Name: ".wh.gone"},
		testimage.File{Name: "opaque/", Mode: 0o755, Type: tar.TypeDir},
		testimage.File{Name: "opaque/.wh..wh..opq"},
		testimage.File{Name: "opaque/new", Mode: 0o644, Data: []byte("upper")},
	)
	if err != nil {
		t.Fatal(err)
	}
	img, err := testimage.Image(sandboxtest.Program{
		{Op: "read_file", Path: "/gone"},
		{Op: "read_file", Path: "/opaque/old"},
		{Op: "read_file", Path: "/opaque/new"},
		{Op: "read_file", Path: "/hard"},
		{Op: "read_file", Path: "/soft"},
		{Op: "env", Key: "FROM_IMAGE"},
		{Op: "write_file", Path: "relative", Data: "in workdir"},
		{Op: "read_file", Path: "/work/relative"},
		{Op: "attempt", Text: "write", Path: "/kept"},
	}, agentLayer(t), lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Config.User = "agent:agents"
	cf.Config.WorkingDir = "/work"
	cf.Config.Env = append(cf.Config.Env, "FROM_IMAGE=yes")
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	id, err := s.Import(t.Context(), img)
	if err != nil {
		t.Fatal(err)
	}
	_, logs := runToEnd(t, s, gw.Spec("layers", id))
	want := "absent /gone\nabsent /opaque/old\npresent /opaque/new upper\npresent /hard lower\npresent /soft lower\n" +
		"env FROM_IMAGE=yes\npresent /work/relative in workdir\nblocked attempt write /kept\n"
	if diff := cmp.Diff(want, string(logs.Stdout)); diff != "" {
		t.Errorf("run (-want +got):\n%s\nstderr %s", diff, logs.Stderr)
	}
}

func TestImportErrors(t *testing.T) {
	s := newSandbox(t, "runc", &ocisandbox.Options{MaxImageBytes: 64 << 20})
	good, err := testimage.Image(sandboxtest.Program{}, agentLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("digest mismatch", func(t *testing.T) {
		cf, _ := good.ConfigFile()
		cf = cf.DeepCopy()
		cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
		bad, err := mutate.ConfigFile(good, cf)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "bad.tar")
		if err := testimage.WriteArchive(path, "bad/image:latest", bad); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ImportArchive(t.Context(), path); !errors.Is(err, ocisandbox.ErrDigestMismatch) {
			t.Errorf("ImportArchive(tampered layer) = %v, want ErrDigestMismatch", err)
		}
	})
	t.Run("too large", func(t *testing.T) {
		small := newSandbox(t, "runc", &ocisandbox.Options{MaxImageBytes: 1 << 20})
		if _, err := small.Import(t.Context(), good); !errors.Is(err, ocisandbox.ErrImageTooLarge) || !strings.Contains(err.Error(), "MaxImageBytes") {
			t.Errorf("Import(agent image, 1 MiB limit) = %v, want ErrImageTooLarge naming the option", err)
		}
	})
	t.Run("missing archive", func(t *testing.T) {
		if _, err := s.ImportArchive(t.Context(), filepath.Join(t.TempDir(), "none.tar")); !errors.Is(err, sandbox.ErrImageNotFound) {
			t.Errorf("ImportArchive(missing) = %v, want sandbox.ErrImageNotFound", err)
		}
	})
	t.Run("docker daemon", func(t *testing.T) {
		_, err := s.ImportDaemon(t.Context(), "compatool/no-such-image:latest")
		switch {
		case errors.Is(err, ocisandbox.ErrDockerUnavailable):
			if !strings.Contains(err.Error(), "start dockerd") {
				t.Errorf("ImportDaemon without a daemon = %v, want advice", err)
			}
		case !errors.Is(err, sandbox.ErrImageNotFound):
			t.Errorf("ImportDaemon(missing image) = %v, want ErrDockerUnavailable or ErrImageNotFound", err)
		}
	})
	t.Run("not an image ID", func(t *testing.T) {
		gw := sandboxtest.NewGateway(t)
		if _, err := s.Start(t.Context(), gw.Spec("x", "agent:latest")); !errors.Is(err, sandbox.ErrImageNotFound) || !strings.Contains(err.Error(), "sha256:") {
			t.Errorf("Start(tag) = %v, want ErrImageNotFound explaining image IDs", err)
		}
	})
}

// TestOCILayout imports the same image from a docker-save archive, an OCI
// layout directory and an OCI layout tar: one image ID.
func TestOCILayout(t *testing.T) {
	s := newSandbox(t, "runc", nil)
	img, err := testimage.Image(sandboxtest.Program{{Op: "print", Text: "from layout\n"}}, agentLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "docker.tar")
	if err := testimage.WriteArchive(archive, "agent/layout:latest", img); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err == nil {
		err = p.AppendImage(img)
	}
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(t.TempDir(), "layout.tar")
	if err := tarDir(dir, tarPath); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, src := range []string{archive, dir, tarPath} {
		got, err := s.ImportArchive(t.Context(), src)
		if err != nil || len(got) != 1 {
			t.Fatalf("ImportArchive(%s) = %v, %v", src, got, err)
		}
		ids = append(ids, got[0])
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Errorf("image IDs differ by source: %v", ids)
	}
	_, logs := runToEnd(t, s, sandboxtest.NewGateway(t).Spec("layout", ids[2]))
	if string(logs.Stdout) != "from layout\n" {
		t.Errorf("stdout %q", logs.Stdout)
	}
}

// TestConcurrentImport imports one image from many goroutines and two
// Sandboxes sharing a cache: one unpack, the same ID everywhere.
func TestConcurrentImport(t *testing.T) {
	cache := filepath.Join(traversableDir(t), "cache")
	a := newSandbox(t, "runc", &ocisandbox.Options{CacheDir: cache})
	b := newSandbox(t, "runc", &ocisandbox.Options{CacheDir: cache})
	img, err := testimage.Image(sandboxtest.Program{}, agentLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 8)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range ids {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() { ids[i], errs[i] = s.Import(context.Background(), img) })
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Errorf("import %d = %s, %v; want %s", i, ids[i], errs[i], ids[0])
		}
	}
	entries, _ := os.ReadDir(filepath.Join(cache, "rootfs"))
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 || strings.HasSuffix(dirs[0], ".partial") {
		t.Errorf("cache holds %v, want one complete root filesystem", dirs)
	}
}

// TestCopyFallback runs with overlayfs disabled: the image is copied into
// the run's writable layer instead.
func TestCopyFallback(t *testing.T) {
	s := newSandbox(t, "runc", &ocisandbox.Options{NoOverlay: true})
	gw := sandboxtest.NewGateway(t)
	img := importProgram(t, s, sandboxtest.Program{
		{Op: "read_file", Path: "/tmp/f"},
		{Op: "write_file", Path: "/tmp/f", Data: "mine"},
		{Op: "mcp_call", Tool: "echo", Args: map[string]any{"text": "copied"}},
	})
	for range 2 {
		_, logs := runToEnd(t, s, gw.Spec("copy", img))
		if want := "absent /tmp/f\nresult copied\n"; string(logs.Stdout) != want {
			t.Errorf("stdout %q, want %q (stderr %s)", logs.Stdout, want, logs.Stderr)
		}
	}
}

// tarDir packs the regular files and directories of dir into a tar file.
func tarDir(dir, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		return err
	}
	return tw.Close()
}
