package app

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
)

// errBadImage marks an uploaded archive the server refuses; its message says
// what is wrong with it.
var errBadImage = errors.New("bad image archive")

func badImage(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadImage, fmt.Sprintf(format, args...))
}

// imageIDRe matches an image ID, the only image reference a submission may
// name: "sha256:" and the hex digest of the image's config.
var imageIDRe = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// checkArchive reads the `docker save` archive at file and returns its
// image ID. It refuses, before any sandbox sees the archive, anything that
// is not exactly one linux image for this machine with an entrypoint; a
// layer entry or hard link that leaves the root filesystem ("../x"); a layer
// whose content does not match the config's diff ID; and images that unpack
// to more than maxBytes.
func checkArchive(file string, maxBytes int64) (string, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(file) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return "", badImage("not a `docker save` archive (%v); create one with `docker save IMAGE -o FILE` or go run ./examples/agents/build", err)
	}
	if len(m) != 1 {
		return "", badImage("the archive holds %d images; save exactly one image per archive", len(m))
	}
	img, err := tarball.Image(opener, nil)
	if err != nil {
		return "", badImage("%v", err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return "", badImage("image config: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", badImage("image config: %v", err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		return "", badImage("the image is for %s/%s; this server runs linux/%s images", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if len(cf.Config.Entrypoint) == 0 && len(cf.Config.Cmd) == 0 {
		return "", badImage("the image has neither an entrypoint nor a command; set ENTRYPOINT to the agent program")
	}
	layers, err := img.Layers()
	if err != nil {
		return "", badImage("layers: %v", err)
	}
	if len(layers) != len(cf.RootFS.DiffIDs) {
		return "", badImage("the image has %d layers but its config lists %d", len(layers), len(cf.RootFS.DiffIDs))
	}
	budget := maxBytes
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return "", badImage("layer %d: %v", i+1, err)
		}
		sum, err := checkLayer(rc, &budget)
		rc.Close()
		if errors.Is(err, errTooLarge) {
			return "", badImage("the image unpacks to more than %d bytes; make it smaller or raise -max-image-bytes", maxBytes)
		}
		if err != nil {
			return "", badImage("layer %d: %v", i+1, err)
		}
		if want := cf.RootFS.DiffIDs[i]; want.Algorithm != "sha256" || want.Hex != sum {
			return "", badImage("layer %d is sha256:%s but the config says %s; the archive is corrupt", i+1, sum, want)
		}
	}
	return id.String(), nil
}

var errTooLarge = errors.New("too large")

// checkLayer reads one uncompressed layer tar and returns its sha256. Every
// entry and hard-link target must stay inside the root: Docker treats a
// leading "/" as the root, but ".." must not climb out of it.
func checkLayer(r io.Reader, budget *int64) (string, error) {
	h := sha256.New()
	cr := &budgetReader{r: io.TeeReader(r, h), budget: budget}
	tr := tar.NewReader(cr)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", unwrapBudget(err, "read layer tar")
		}
		if escapes(hdr.Name) {
			return "", fmt.Errorf("entry %q leaves the image's root filesystem", hdr.Name)
		}
		if hdr.Typeflag == tar.TypeLink && escapes(hdr.Linkname) {
			return "", fmt.Errorf("hard link %q points to %q, outside the image's root filesystem", hdr.Name, hdr.Linkname)
		}
	}
	// The padding after the tar's end is part of the diff ID.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return "", unwrapBudget(err, "read layer")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func escapes(name string) bool {
	c := path.Clean(strings.TrimLeft(name, "/"))
	return c == ".." || strings.HasPrefix(c, "../")
}

func unwrapBudget(err error, what string) error {
	if errors.Is(err, errTooLarge) {
		return errTooLarge
	}
	return fmt.Errorf("%s: %v", what, err)
}

// budgetReader fails with errTooLarge once more than *budget bytes are read.
type budgetReader struct {
	r      io.Reader
	budget *int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	*b.budget -= int64(n)
	if *b.budget < 0 {
		return n, errTooLarge
	}
	return n, err
}

// An importer makes a checked archive runnable by the sandbox under its
// image ID, and removes an image again.
type importer interface {
	Import(ctx context.Context, file, id string) error
	// Remove deletes an image from the sandbox; an image it does not hold
	// is not an error.
	Remove(ctx context.Context, id string) error
}

// archiveImporter is what ocisandbox offers.
type archiveImporter interface {
	ImportArchive(ctx context.Context, path string) ([]string, error)
	RemoveImage(ctx context.Context, id string) error
}

// sandboxImporter imports into a container sandbox.
type sandboxImporter struct{ sb archiveImporter }

func (s sandboxImporter) Import(ctx context.Context, file, id string) error {
	ids, err := s.sb.ImportArchive(ctx, file)
	if err != nil {
		return err
	}
	if len(ids) != 1 || ids[0] != id {
		return fmt.Errorf("the sandbox imported %v from an archive checked as %s", ids, id)
	}
	return nil
}

func (s sandboxImporter) Remove(ctx context.Context, id string) error {
	return s.sb.RemoveImage(ctx, id)
}

// memImporter registers every checked image as the in-process reference
// agent: memsandbox runs Go functions, not images. It is for trials, tests
// and load tests, never for untrusted agents.
type memImporter struct{ sb *memsandbox.Sandbox }

func (m memImporter) Import(_ context.Context, _, id string) error {
	m.sb.Register(id, referenceAgent)
	return nil
}

// Remove does nothing: every registration is the same in-process function,
// which holds no file and no data of the image.
func (memImporter) Remove(context.Context, string) error { return nil }

// referenceAgent is examples/agents/notesagent run in-process.
func referenceAgent(ctx context.Context, env *memsandbox.Env) int {
	err := scripted.Solve(ctx, scripted.Config{
		MCPURL:     env.Getenv(sandbox.EnvMCPURL),
		Token:      env.Getenv(sandbox.EnvMCPToken),
		Goal:       env.Getenv(sandbox.EnvGoal),
		HTTPClient: env.HTTPClient(),
	})
	if err != nil {
		fmt.Fprintln(env.Stderr(), "notesagent:", err)
		return 1
	}
	fmt.Fprintf(env.Stdout(), "notesagent: run %s done: %s\n", env.Getenv(sandbox.EnvRunID), env.Getenv(sandbox.EnvGoal))
	return 0
}
