package ocisandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RemoveImage deletes an imported image: its record at once, so that a
// later Start of it fails with [sandbox.ErrImageNotFound], and its unpacked
// root filesystem unless another imported image has the same layers. Runs
// of the image that are live keep it: its root filesystem goes when the
// last of them is torn down, and RemoveImage does not wait for that. A
// removed image can be imported again.
//
// RemoveImage is idempotent: an image that is not (or no longer) imported
// is not an error, and calling it again finishes a removal that a crash or
// an error cut short. It knows the runs of this Sandbox only: with
// Options.CacheDir shared between processes, remove an image only when no
// other process runs it.
func (s *Sandbox) RemoveImage(ctx context.Context, id string) error {
	if _, err := parseImageID(id); err != nil {
		return err
	}
	chain, err := s.recordedChain(id)
	if errors.Is(err, fs.ErrNotExist) {
		s.mu.Lock()
		delete(s.images, id)
		s.mu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("ocisandbox: remove image %s: %w", id, err)
	}
	unlock, err := s.lockChain(ctx, chain)
	if err != nil {
		return fmt.Errorf("ocisandbox: remove image %s: %w", id, err)
	}
	defer unlock()
	s.mu.Lock()
	delete(s.images, id)
	err = os.Rename(s.imageConfigPath(id), s.tombstonePath(id))
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		err = nil
		s.doomed[s.rootfsPath(chain)] = true
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ocisandbox: remove image %s: %w", id, err)
	}
	if err := s.collect(chain); err != nil {
		return fmt.Errorf("ocisandbox: remove image %s: %w; call RemoveImage again to finish", id, err)
	}
	s.log.Info("ocisandbox: image removed", "image", id)
	return nil
}

// recordedChain returns the chain ID of an image from its config, or from
// its tombstone if a removal began; fs.ErrNotExist if there is neither.
func (s *Sandbox) recordedChain(id string) (string, error) {
	chain, err := configChain(s.imageConfigPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		chain, err = configChain(s.tombstonePath(id))
	}
	return chain, err
}

// configChain reads the chain ID of the layers an image config lists.
func configChain(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []v1.Hash `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("parse %s: %w", path, err)
	}
	return chainID(cfg.RootFS.DiffIDs), nil
}

// releaseImage counts one run of im fewer, and removes its root filesystem
// if RemoveImage left that to the last run.
func (s *Sandbox) releaseImage(im *image) {
	s.mu.Lock()
	s.users[im.rootfs]--
	last := s.users[im.rootfs] <= 0
	if last {
		delete(s.users, im.rootfs)
	}
	doomed := last && s.doomed[im.rootfs]
	s.mu.Unlock()
	if !doomed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.DestroyGrace)
	defer cancel()
	err := func() error {
		unlock, err := s.lockChain(ctx, im.chain)
		if err != nil {
			return err
		}
		defer unlock()
		return s.collect(im.chain)
	}()
	if err != nil {
		s.log.Error("ocisandbox: could not remove the files of a removed image; call RemoveImage again to finish", "image", im.id, "err", err)
	}
}

// collect removes the root filesystem of chain (in every user-namespace
// variant), the tombstones of the images that were made of it and the
// chain's lock file, unless something still uses it: an imported image
// with the same layers (then it stays for good), or a live run of this
// Sandbox (then the last run to end calls collect again). The caller holds
// the chain's lock, so no import of the chain is under way.
func (s *Sandbox) collect(chain string) error {
	dir := filepath.Join(s.cacheDir, "images")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var tombstones []string
	imported := false
	for _, e := range entries {
		tomb := strings.HasSuffix(e.Name(), tombstoneExt)
		if !tomb && !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		// A config that cannot be read names no chain we could remove.
		if c, err := configChain(filepath.Join(dir, e.Name())); err != nil || c != chain {
			continue
		}
		if tomb {
			tombstones = append(tombstones, filepath.Join(dir, e.Name()))
		} else {
			imported = true
		}
	}
	rootfs := s.rootfsPath(chain)
	s.mu.Lock()
	inUse := s.users[rootfs] > 0
	if imported || !inUse {
		delete(s.doomed, rootfs)
	}
	s.mu.Unlock()
	if inUse && !imported {
		// The tombstones stay until the root filesystem is gone.
		s.log.Info("ocisandbox: image files stay until their last run ends", "chain", chain)
		return nil
	}
	if !imported {
		if err := removeChainDirs(filepath.Join(s.cacheDir, "rootfs"), chain); err != nil {
			return err
		}
	}
	for _, t := range tombstones {
		if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if imported {
		return nil
	}
	// Held by the caller; lockFile copes with a lock file removed under it.
	if err := os.Remove(s.chainLockPath(chain)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeChainDirs removes every root filesystem of chain in dir: the
// variants of each user-namespace shift and any partial unpack. Each is
// renamed to its partial name first, so that an interrupted removal never
// leaves a root filesystem that looks complete.
func removeChainDirs(dir, chain string) error {
	variants, err := filepath.Glob(filepath.Join(dir, chain+"-u*"))
	if err != nil {
		return err
	}
	variants = append(variants, filepath.Join(dir, chain), filepath.Join(dir, chain+".partial"))
	for _, v := range variants {
		partial := v
		if !strings.HasSuffix(v, ".partial") && !strings.HasSuffix(v, ".lock") {
			partial = v + ".partial"
			if err := os.RemoveAll(partial); err != nil {
				return err
			}
			if err := os.Rename(v, partial); errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return err
			}
		}
		if err := os.RemoveAll(partial); err != nil {
			return err
		}
	}
	return nil
}
