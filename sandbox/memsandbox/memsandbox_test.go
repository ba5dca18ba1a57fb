package memsandbox_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	sandboxtest.RunConformanceTests(t, func(*testing.T) sandboxtest.Harness {
		return &harness{s: memsandbox.New(nil, nil)}
	})
}

type harness struct {
	s *memsandbox.Sandbox
	n atomic.Int64
}

func (h *harness) Sandbox() sandbox.Sandbox { return h.s }
func (h *harness) Live() []string           { return h.s.Live() }
func (h *harness) Close()                   {}

func (h *harness) Image(_ *testing.T, p sandboxtest.Program) string {
	image := fmt.Sprintf("program-%d", h.n.Add(1))
	h.s.Register(image, func(ctx context.Context, env *memsandbox.Env) int {
		return sandboxtest.Run(ctx, system{env}, p)
	})
	return image
}

// system is the interpreter's System on a memsandbox Env: a spawned child is
// a process started with Env.Go.
type system struct{ *memsandbox.Env }

func (s system) Spawn(p sandboxtest.Program) error {
	return s.Go(func(ctx context.Context) { sandboxtest.Run(ctx, s, p) })
}
