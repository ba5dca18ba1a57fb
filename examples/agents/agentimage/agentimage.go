// Package agentimage turns a Go agent program into a container image archive
// in `docker save` format, with go-containerregistry and the go command
// only: no Docker daemon is needed to produce an image that Compatool's
// sandboxes run.
//
// The image is minimal: one layer holding the static binary as /agent and an
// empty world-writable /tmp; the entrypoint is /agent and the user is
// nobody (65534:65534). Files and the config carry fixed timestamps, so the
// same binary always gives the same image ID.
//
// Compatool names an image by its image ID, "sha256:<hex>" of the image's
// config: [Build] returns it, and it is what the reference server reports
// for an uploaded archive.
package agentimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NotesAgent is the import path of the reference agent that solves the
// notes tasks.
const NotesAgent = "github.com/compatool/compatool/examples/agents/notesagent"

// User is the user the image's entrypoint runs as: nobody.
const User = "65534:65534"

// Options configure [Build] and [Compile]. The zero value (or nil) is
// usable.
type Options struct {
	// Dir is the directory the go command runs in; it must be inside the
	// module that holds the package. Default: the current directory.
	Dir string
	// GOARCH is the target architecture; default runtime.GOARCH. The
	// target OS is always linux.
	GOARCH string
	// Tag names the image inside the archive; default
	// "compatool/<last element of the package path>:latest".
	Tag string
}

func (o *Options) or() Options {
	if o == nil {
		return Options{GOARCH: runtime.GOARCH}
	}
	c := *o
	if c.GOARCH == "" {
		c.GOARCH = runtime.GOARCH
	}
	return c
}

// Build compiles the Go main package pkg (an import path or a ./relative
// path), packs it into an image with [Image] and writes the image as a
// `docker save` archive at archive. It returns the image ID.
func Build(ctx context.Context, pkg, archive string, opts *Options) (string, error) {
	o := opts.or()
	dir, err := os.MkdirTemp("", "agentimage-")
	if err != nil {
		return "", fmt.Errorf("agentimage: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "agent")
	if err := Compile(ctx, pkg, bin, &o); err != nil {
		return "", err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("agentimage: %w", err)
	}
	img, err := Image(data, o.GOARCH)
	if err != nil {
		return "", err
	}
	tag := o.Tag
	if tag == "" {
		tag = "compatool/" + path.Base(pkg) + ":latest"
	}
	if err := WriteArchive(archive, tag, img); err != nil {
		return "", err
	}
	return ID(img)
}

// Compile builds the Go main package pkg into a static linux binary at out
// (CGO_ENABLED=0, -trimpath, no VCS stamp, stripped), so that it needs
// nothing from the image but itself.
func Compile(ctx context.Context, pkg, out string, opts *Options) error {
	o := opts.or()
	gotool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("agentimage: the go command is needed to build %s; install Go or put it in PATH: %w", pkg, err)
	}
	cmd := exec.CommandContext(ctx, gotool, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.GOARCH)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("agentimage: go build %s: %v\n%s", pkg, err, msg)
	}
	return nil
}

// Image returns the image of a static linux binary for arch: /agent (the
// binary) and /tmp in one layer, entrypoint /agent, user [User].
func Image(binary []byte, arch string) (v1.Image, error) {
	if len(binary) == 0 {
		return nil, errors.New("agentimage: empty binary")
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	epoch := time.Unix(0, 0)
	for _, h := range []*tar.Header{
		{Name: "agent", Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(binary)), ModTime: epoch},
		{Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir, ModTime: epoch},
	} {
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("agentimage: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(binary); err != nil {
				return nil, fmt.Errorf("agentimage: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("agentimage: %w", err)
	}
	layerTar := raw.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("agentimage: layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("agentimage: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("agentimage: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{"/agent"}
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("agentimage: %w", err)
	}
	return img, nil
}

// ID returns img's image ID, "sha256:<hex>" of its config.
func ID(img v1.Image) (string, error) {
	h, err := img.ConfigName()
	if err != nil {
		return "", fmt.Errorf("agentimage: %w", err)
	}
	return h.String(), nil
}

// WriteArchive writes img, tagged tag, as a `docker save` archive at path.
// The file appears whole or not at all.
func WriteArchive(path, tag string, img v1.Image) (err error) {
	t, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("agentimage: tag %q: %w", tag, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".agentimage-*.tar")
	if err != nil {
		return fmt.Errorf("agentimage: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := tarball.Write(t, img, f); err != nil {
		return fmt.Errorf("agentimage: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("agentimage: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("agentimage: %w", err)
	}
	return nil
}
