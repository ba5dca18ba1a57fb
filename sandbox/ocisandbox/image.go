package ocisandbox

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/compatool/compatool/sandbox"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/daemon"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// errTooLarge is wrapped into ErrImageTooLarge with the limit by importImage.
var errTooLarge = errors.New("image exceeds the size limit")

// image is an imported image: its config and its unpacked root filesystem.
type image struct {
	id     string // "sha256:<hex>" of the config
	config v1.ConfigFile
	chain  string // chain ID of its layers, shared by images with the same layers
	rootfs string
}

// Import unpacks img into the cache (once per distinct root filesystem) and
// returns its image ID, "sha256:<hex>" of its config, which is what
// [sandbox.Spec.Image] names. It checks every layer against the diff IDs of
// the config ([ErrDigestMismatch]) and the total uncompressed size against
// Options.MaxImageBytes ([ErrImageTooLarge]). It is safe to call
// concurrently, also from several processes sharing Options.CacheDir.
func (s *Sandbox) Import(ctx context.Context, img v1.Image) (string, error) {
	im, err := s.importImage(ctx, img)
	if err != nil {
		return "", err
	}
	return im.id, nil
}

// ImportArchive imports every image of an archive and returns their image
// IDs: a `docker save` tarball, an OCI image layout directory, or an OCI
// image layout packed in a tar file. In an index, only images for this
// machine's platform (or without a platform) are imported.
func (s *Sandbox) ImportArchive(ctx context.Context, path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: ocisandbox: archive %s: %v", sandbox.ErrImageNotFound, path, err)
	}
	if fi.IsDir() {
		return s.importLayout(ctx, path)
	}
	names, err := tarNames(path, "manifest.json", "index.json")
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: read archive %s: %w", path, err)
	}
	switch {
	case names["manifest.json"]:
		return s.importDockerArchive(ctx, path)
	case names["index.json"]:
		dir, err := os.MkdirTemp(s.cacheDir, "layout-")
		if err != nil {
			return nil, fmt.Errorf("ocisandbox: %w", err)
		}
		defer os.RemoveAll(dir)
		if err := untarLayout(path, dir, s.opts.MaxImageBytes); err != nil {
			return nil, err
		}
		return s.importLayout(ctx, dir)
	default:
		return nil, fmt.Errorf("ocisandbox: %s is neither a `docker save` archive (no manifest.json) nor an OCI image layout (no index.json)", path)
	}
}

// ImportDaemon imports image ref (a name, name:tag or name@digest) from the
// local Docker daemon. If no daemon answers, the error wraps
// [ErrDockerUnavailable].
func (s *Sandbox) ImportDaemon(ctx context.Context, ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%w: ocisandbox: bad image reference %q: %v", sandbox.ErrImageNotFound, ref, err)
	}
	c, err := dockerClient(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	img, err := daemon.Image(r, daemon.WithContext(ctx), daemon.WithClient(c), daemon.WithFileBufferedOpener())
	if err != nil {
		return "", fmt.Errorf("%w: ocisandbox: docker image %q: %v", sandbox.ErrImageNotFound, ref, err)
	}
	return s.Import(ctx, img)
}

// dockerClient returns a client of the local Docker daemon, or an error
// wrapping ErrDockerUnavailable if none answers.
func dockerClient(ctx context.Context) (*client.Client, error) {
	c, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDockerUnavailable, err)
	}
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %v; start dockerd, or import a `docker save` archive with ImportArchive", ErrDockerUnavailable, err)
	}
	return c, nil
}

func (s *Sandbox) importDockerArchive(ctx context.Context, path string) ([]string, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: %s: %w", path, err)
	}
	var ids []string
	for i, d := range m {
		var tag *name.Tag
		if len(m) > 1 {
			if len(d.RepoTags) == 0 {
				return nil, fmt.Errorf("ocisandbox: %s: image %d of %d has no tag, so it cannot be selected; save images one per archive", path, i+1, len(m))
			}
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return nil, fmt.Errorf("ocisandbox: %s: %w", path, err)
			}
			tag = &t
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, fmt.Errorf("ocisandbox: %s: %w", path, err)
		}
		id, err := s.Import(ctx, img)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func (s *Sandbox) importLayout(ctx context.Context, dir string) ([]string, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: OCI layout %s: %w", dir, err)
	}
	var ids []string
	var walk func(v1.ImageIndex, int) error
	walk = func(idx v1.ImageIndex, depth int) error {
		if depth > 4 {
			return fmt.Errorf("ocisandbox: OCI layout %s: indexes nested too deep", dir)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return fmt.Errorf("ocisandbox: OCI layout %s: %w", dir, err)
		}
		for _, d := range im.Manifests {
			if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != runtime.GOARCH) {
				continue
			}
			switch {
			case d.MediaType.IsIndex():
				child, err := idx.ImageIndex(d.Digest)
				if err != nil {
					return fmt.Errorf("ocisandbox: OCI layout %s: %w", dir, err)
				}
				if err := walk(child, depth+1); err != nil {
					return err
				}
			case d.MediaType.IsImage():
				img, err := idx.Image(d.Digest)
				if err != nil {
					return fmt.Errorf("ocisandbox: OCI layout %s: %w", dir, err)
				}
				id, err := s.Import(ctx, img)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
		}
		return nil
	}
	if err := walk(idx, 0); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: ocisandbox: OCI layout %s has no image for linux/%s", sandbox.ErrImageNotFound, dir, runtime.GOARCH)
	}
	return ids, nil
}

func (s *Sandbox) importImage(ctx context.Context, img v1.Image) (*image, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: read image config: %w", err)
	}
	want, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image config digest: %w", err)
	}
	sum := sha256.Sum256(raw)
	if got := hex.EncodeToString(sum[:]); want.Algorithm != "sha256" || got != want.Hex {
		return nil, fmt.Errorf("%w: image config is sha256:%s, its manifest says %s", ErrDigestMismatch, got, want)
	}
	id := "sha256:" + want.Hex
	if im, err := s.lookupImage(id); err == nil {
		return im, nil
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: parse config: %w", id, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: layers: %w", id, err)
	}
	if len(layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("%w: image %s has %d layers but its config lists %d diff IDs", ErrDigestMismatch, id, len(layers), len(cfg.RootFS.DiffIDs))
	}
	var total int64
	for _, l := range layers {
		if n, err := l.Size(); err == nil {
			total += n
		}
	}
	if total > s.opts.MaxImageBytes {
		return nil, fmt.Errorf("%w: image %s has %d bytes of layers, over Options.MaxImageBytes (%d)", ErrImageTooLarge, id, total, s.opts.MaxImageBytes)
	}
	chain := chainID(cfg.RootFS.DiffIDs)
	rootfs := s.rootfsPath(chain)
	// The chain's lock keeps RemoveImage of an image with the same layers
	// from removing the root filesystem between unpack and the config
	// that keeps it.
	unlock, err := s.lockChain(ctx, chain)
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: %w", id, err)
	}
	defer unlock()
	if err := s.unpack(ctx, rootfs, layers, cfg.RootFS.DiffIDs); err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("%w: image %s unpacks to more than Options.MaxImageBytes (%d)", ErrImageTooLarge, id, s.opts.MaxImageBytes)
		}
		return nil, fmt.Errorf("ocisandbox: image %s: %w", id, err)
	}
	if err := writeFileAtomic(s.imageConfigPath(id), raw); err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: %w", id, err)
	}
	// Imported again after RemoveImage: the image is back.
	if err := os.Remove(s.tombstonePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ocisandbox: image %s: %w", id, err)
	}
	im := &image{id: id, config: *cfg, chain: chain, rootfs: rootfs}
	s.mu.Lock()
	s.images[id] = im
	s.mu.Unlock()
	return im, nil
}

// lookupImage returns an imported image, from memory or from the cache of
// an earlier process.
func (s *Sandbox) lookupImage(id string) (*image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadImageLocked(id)
}

// acquireImage returns an imported image and counts one more run of its
// root filesystem; releaseImage undoes it.
func (s *Sandbox) acquireImage(id string) (*image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.loadImageLocked(id)
	if err != nil {
		return nil, err
	}
	s.users[im.rootfs]++
	return im, nil
}

// loadImageLocked returns an image from memory, or from the cache, which it
// reads with s.mu held so that RemoveImage (which takes s.mu to retire an
// image) never interleaves with it.
func (s *Sandbox) loadImageLocked(id string) (*image, error) {
	if im := s.images[id]; im != nil {
		return im, nil
	}
	hexID, err := parseImageID(id)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(s.imageConfigPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: ocisandbox: %s was never imported or was removed; import it with ImportArchive, ImportDaemon or Import", sandbox.ErrImageNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: %w", id, err)
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != hexID {
		return nil, fmt.Errorf("%w: cached config of %s no longer matches its digest; remove it from %s and import again", ErrDigestMismatch, id, s.cacheDir)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("ocisandbox: image %s: parse config: %w", id, err)
	}
	chain := chainID(cfg.RootFS.DiffIDs)
	rootfs := s.rootfsPath(chain)
	if _, err := os.Stat(rootfs); err != nil {
		return nil, fmt.Errorf("%w: ocisandbox: root filesystem of %s is missing from the cache; import it again", sandbox.ErrImageNotFound, id)
	}
	im := &image{id: id, config: *cfg, chain: chain, rootfs: rootfs}
	s.images[id] = im
	return im, nil
}

// parseImageID returns the hex digest of an image ID; anything else is not
// an image ID, and never becomes a path.
func parseImageID(id string) (string, error) {
	hexID, ok := strings.CutPrefix(id, "sha256:")
	if !ok || len(hexID) != 64 || strings.Trim(hexID, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%w: ocisandbox: %q is not an image ID; name images by the sha256:<hex> that Import returns", sandbox.ErrImageNotFound, id)
	}
	return hexID, nil
}

func (s *Sandbox) imageConfigPath(id string) string {
	return filepath.Join(s.cacheDir, "images", strings.TrimPrefix(id, "sha256:")+".json")
}

// tombstonePath is where RemoveImage moves an image's config until the
// image's root filesystem is gone, so that a removal cut short (by a crash,
// or by runs still using it) can be finished by RemoveImage again.
func (s *Sandbox) tombstonePath(id string) string {
	return filepath.Join(s.cacheDir, "images", strings.TrimPrefix(id, "sha256:")+tombstoneExt)
}

const tombstoneExt = ".removed"

// chainID identifies the root filesystem made of diffIDs, so images sharing
// all layers share it.
func chainID(diffIDs []v1.Hash) string {
	chain := "empty"
	for i, d := range diffIDs {
		if i == 0 {
			chain = d.Hex
			continue
		}
		sum := sha256.Sum256([]byte("sha256:" + chain + " " + d.String()))
		chain = hex.EncodeToString(sum[:])
	}
	return chain
}

// rootfsPath is the cache directory of a chain's root filesystem: named by
// the chain ID and the user-namespace shift, which changes file owners.
func (s *Sandbox) rootfsPath(chain string) string {
	if s.idShift != 0 {
		chain = fmt.Sprintf("%s-u%d", chain, s.idShift)
	}
	return filepath.Join(s.cacheDir, "rootfs", chain)
}

// lockChain takes the chain's lock, which serialises unpacking it, writing
// the config of an image made of it, and removing it, in this and other
// processes sharing the cache.
func (s *Sandbox) lockChain(ctx context.Context, chain string) (unlock func(), err error) {
	return lockFile(ctx, s.chainLockPath(chain))
}

func (s *Sandbox) chainLockPath(chain string) string {
	return filepath.Join(s.cacheDir, "rootfs", chain+".lock")
}

// unpack extracts layers into rootfs unless it is already there; the
// caller holds the chain's lock. The rootfs appears by an atomic rename
// only when complete, so a crash leaves at most a partial directory, which
// the next unpacker removes.
func (s *Sandbox) unpack(ctx context.Context, rootfs string, layers []v1.Layer, diffIDs []v1.Hash) error {
	if _, err := os.Stat(rootfs); err == nil {
		return nil
	}
	partial := rootfs + ".partial"
	if err := os.RemoveAll(partial); err != nil {
		return err
	}
	if err := os.Mkdir(partial, 0o755); err != nil {
		return err
	}
	if err := os.Chown(partial, s.idShift, s.idShift); err != nil {
		return err
	}
	if err := s.extractLayers(ctx, partial, layers, diffIDs); err != nil {
		os.RemoveAll(partial)
		return err
	}
	return os.Rename(partial, rootfs)
}

func (s *Sandbox) extractLayers(ctx context.Context, dir string, layers []v1.Layer, diffIDs []v1.Hash) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	a := &layerApplier{root: root, idShift: s.idShift, budget: s.opts.MaxImageBytes}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := a.apply(l, diffIDs[i]); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i, diffIDs[i], err)
		}
	}
	return nil
}

// apply extracts one layer, hashing its uncompressed stream and counting it
// against the budget.
func (a *layerApplier) apply(l v1.Layer, diffID v1.Hash) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	vr := &verifyingReader{r: rc, h: sha256.New(), budget: &a.budget}
	if err := a.applyLayer(vr); err != nil {
		return err
	}
	// The tar end marker may leave padding unread; it is part of the digest.
	if _, err := io.Copy(io.Discard, vr); err != nil {
		return err
	}
	if got := hex.EncodeToString(vr.h.Sum(nil)); diffID.Algorithm != "sha256" || got != diffID.Hex {
		return fmt.Errorf("%w: layer content is sha256:%s, the image config says %s", ErrDigestMismatch, got, diffID)
	}
	return nil
}

// verifyingReader hashes what it reads and charges it to budget: tar
// headers and padding count as well as file contents, which bounds the work
// a layer (or a decompression bomb) can cause.
type verifyingReader struct {
	r      io.Reader
	h      hash.Hash
	budget *int64
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	if *v.budget -= int64(n); *v.budget < 0 {
		return n, errTooLarge
	}
	return n, err
}

// tarNames reports which of names are entries of the tar file at path.
func tarNames(path string, names ...string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	found := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return nil, err
		}
		n := strings.TrimPrefix(h.Name, "./")
		for _, want := range names {
			if n == want {
				found[n] = true
			}
		}
	}
}

// untarLayout unpacks an OCI layout tar (regular files and directories
// only) into dir, at most limit bytes.
func untarLayout(path, dir string, limit int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ocisandbox: read %s: %w", path, err)
		}
		n, err := cleanEntry(h.Name)
		if err != nil {
			return fmt.Errorf("ocisandbox: %s: %w", path, err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(n, 0o700); err != nil {
				return fmt.Errorf("ocisandbox: %s: %w", path, err)
			}
		case tar.TypeReg:
			if limit -= h.Size; limit < 0 {
				return fmt.Errorf("%w: OCI layout %s is larger than Options.MaxImageBytes", ErrImageTooLarge, path)
			}
			if err := root.MkdirAll(filepath.Dir(n), 0o700); err != nil {
				return fmt.Errorf("ocisandbox: %s: %w", path, err)
			}
			w, err := root.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return fmt.Errorf("ocisandbox: %s: %w", path, err)
			}
			_, err = io.CopyN(w, tr, h.Size)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("ocisandbox: %s: %w", path, err)
			}
		}
	}
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// lockFile takes an exclusive flock on path, waiting for ctx. Locks of
// separate opens conflict even within one process. A holder may remove
// the file before unlocking (collect does); a lock won on a removed file
// guards nothing, so lockFile then locks the file now at path.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		done := make(chan error, 1)
		go func() { done <- unix.Flock(int(f.Fd()), unix.LOCK_EX) }()
		select {
		case err := <-done:
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("lock %s: %w", path, err)
			}
		case <-ctx.Done():
			// Closing the file releases the lock if the goroutine gets it later.
			go func() { <-done; f.Close() }()
			return nil, ctx.Err()
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Dev == now.Dev && held.Ino == now.Ino {
			return func() { f.Close() }, nil
		}
		f.Close()
	}
}
