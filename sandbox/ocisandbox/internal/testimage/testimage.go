// Package testimage builds the small container images that ocisandbox's
// tests and benchmark run: the sandboxtest agent, built static, in a
// one-layer image whose config carries the agent's program, and one-binary
// images of probes such as compat32.
package testimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"time"

	"github.com/compatool/compatool/sandbox/sandboxtest"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// AgentPackage is the import path of the interpreter binary.
const AgentPackage = "github.com/compatool/compatool/sandbox/sandboxtest/agent"

// Compat32Package is the import path of a command that tries one system
// call through the 32-bit compat ABI (see its package comment).
const Compat32Package = "github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage/compat32"

// BuildAgent builds the sandboxtest agent with CGO_ENABLED=0 into dir and
// returns the binary's path. It needs the go command and this module.
func BuildAgent(ctx context.Context, dir string) (string, error) {
	return Build(ctx, dir, AgentPackage)
}

// Build builds the command pkg of this module with CGO_ENABLED=0 into dir
// and returns the binary's path. It needs the go command.
func Build(ctx context.Context, dir, pkg string) (string, error) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build %s: %w", pkg, err)
	}
	bin := filepath.Join(dir, path.Base(pkg))
	cmd := exec.CommandContext(ctx, gotool, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// CommandImage returns a one-layer image whose entrypoint is a copy of
// the static binary at bin.
func CommandImage(bin string) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(bin)
	layer, err := Layer(File{Name: name, Mode: 0o755, Data: data})
	if err != nil {
		return nil, err
	}
	return linuxImage([]v1.Layer{layer}, "/"+name, nil)
}

// linuxImage returns an image of layers for this machine's architecture
// with the given entrypoint and environment.
func linuxImage(layers []v1.Layer, entrypoint string, env []string) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Env = env
	return mutate.ConfigFile(img, cf)
}

// File is one entry of a layer built by [Layer].
type File struct {
	Name     string
	Mode     int64
	Type     byte // tar.TypeReg (default), TypeDir, TypeSymlink, TypeLink
	Linkname string
	Data     []byte
}

// Layer returns a gzip-compressed layer holding files, in order.
func Layer(files ...File) (v1.Layer, error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: f.Mode, Typeflag: f.Type, Linkname: f.Linkname, Size: int64(len(f.Data)), ModTime: time.Unix(0, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Size > 0 {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// AgentLayer returns the layer of the agent image: /agent and a
// world-writable /tmp.
func AgentLayer(agentBinary string) (v1.Layer, error) {
	bin, err := os.ReadFile(agentBinary)
	if err != nil {
		return nil, err
	}
	return Layer(
		File{Name: "agent", Mode: 0o755, Data: bin},
		File{Name: "tmp/", Mode: 0o1777, Type: tar.TypeDir},
	)
}

// Image returns an image of layers whose entrypoint is /agent running p.
func Image(p sandboxtest.Program, layers ...v1.Layer) (v1.Image, error) {
	prog, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return linuxImage(layers, "/agent", []string{"PATH=/", sandboxtest.ProgramEnv + "=" + string(prog)})
}

// WriteArchive writes img as a `docker save` archive at path, tagged tag.
func WriteArchive(path, tag string, img v1.Image) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, t, img)
}
