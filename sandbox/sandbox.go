// Package sandbox defines how an untrusted agent image is run: a [Sandbox]
// starts one [Instance] per run from a [Spec], and the instance is destroyed
// when the run ends.
//
// It is the contract behind promises P1, P2, P3, P13 and P14 of DESIGN.md:
// every run gets an instance provisioned for it alone; the instance can reach
// exactly one network endpoint, the run's MCP gateway ([Spec.MCPURL]); it is
// destroyed on every path (exit, deadline, cancellation, host panic) and
// nothing of it survives; environment variables given in [Spec.Env] exist only
// inside it; the image never leaves it.
//
// Drivers live in subpackages (memsandbox, ocisandbox, cfsandbox) and all pass
// the conformance suite in sandboxtest.
//
// # Errors
//
// Drivers wrap [ErrImageNotFound], [ErrInvalidSpec] and [ErrDestroyed] so that
// callers can classify failures with errors.Is. Any other error from Start is
// an infrastructure failure.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Environment variables every agent receives. Drivers set EnvMCPURL
// themselves (to an address inside the sandbox that reaches Spec.MCPURL); the
// harness sets the others in Spec.Env.
const (
	EnvMCPURL   = "COMPATOOL_MCP_URL"
	EnvMCPToken = "COMPATOOL_MCP_TOKEN"
	EnvRunID    = "COMPATOOL_RUN_ID"
	EnvGoal     = "COMPATOOL_GOAL"
)

var (
	// ErrImageNotFound reports that the driver cannot find the named image.
	ErrImageNotFound = errors.New("sandbox: image not found")
	// ErrInvalidSpec reports a Spec that fails [Spec.Validate].
	ErrInvalidSpec = errors.New("sandbox: invalid spec")
	// ErrDestroyed reports a call on an instance that was already destroyed.
	ErrDestroyed = errors.New("sandbox: instance destroyed")
)

// Limits bound what one instance may use. Zero fields take the defaults of
// [DefaultLimits].
type Limits struct {
	// Timeout is the wall-clock deadline from Start; at the deadline every
	// process of the instance is killed and Wait reports TimedOut.
	Timeout time.Duration
	// MemoryBytes caps resident memory.
	MemoryBytes int64
	// PIDs caps the number of processes (or goroutines the driver tracks).
	PIDs int64
	// CPUs caps CPU time as a number of cores (1.5 = one and a half).
	CPUs float64
	// LogBytes caps what is kept of each of stdout and stderr; the rest is
	// discarded and [Logs.Truncated] is set.
	LogBytes int
}

// DefaultLimits are used for zero fields of [Limits].
var DefaultLimits = Limits{
	Timeout:     10 * time.Minute,
	MemoryBytes: 1 << 30,
	PIDs:        256,
	CPUs:        1,
	LogBytes:    1 << 20,
}

// WithDefaults returns l with zero fields replaced by [DefaultLimits].
func (l Limits) WithDefaults() Limits {
	if l.Timeout <= 0 {
		l.Timeout = DefaultLimits.Timeout
	}
	if l.MemoryBytes <= 0 {
		l.MemoryBytes = DefaultLimits.MemoryBytes
	}
	if l.PIDs <= 0 {
		l.PIDs = DefaultLimits.PIDs
	}
	if l.CPUs <= 0 {
		l.CPUs = DefaultLimits.CPUs
	}
	if l.LogBytes <= 0 {
		l.LogBytes = DefaultLimits.LogBytes
	}
	return l
}

// Spec describes one run's instance.
type Spec struct {
	// RunID names the run; drivers use it in instance names and labels.
	RunID string
	// Image names the agent image. Its form is the driver's: a registered
	// agent name for memsandbox, a digest for container drivers.
	Image string
	// Env is the agent's environment (besides EnvMCPURL, which the driver
	// sets). Values may be secrets: drivers must not log, persist or expose
	// them outside the instance.
	Env map[string]string
	// MCPURL is the run's MCP gateway as the host reaches it. It is the only
	// endpoint the instance may reach; the driver gives the agent, in
	// EnvMCPURL, an address that leads there and nowhere else.
	MCPURL string
	// Limits bound the instance.
	Limits Limits
}

// Validate reports whether the spec can be started.
func (s Spec) Validate() error {
	if s.RunID == "" {
		return fmt.Errorf("%w: empty RunID", ErrInvalidSpec)
	}
	if s.Image == "" {
		return fmt.Errorf("%w: empty Image", ErrInvalidSpec)
	}
	u, err := url.Parse(s.MCPURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: MCPURL %q is not an absolute http(s) URL", ErrInvalidSpec, s.MCPURL)
	}
	for k := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("%w: bad environment variable name %q", ErrInvalidSpec, k)
		}
		if k == EnvMCPURL {
			return fmt.Errorf("%w: %s is set by the driver, not the caller", ErrInvalidSpec, EnvMCPURL)
		}
	}
	return nil
}

// A Sandbox starts instances. Implementations must be safe for concurrent
// use; each Start provisions a fresh instance that shares no filesystem,
// process, memory or environment with any other.
type Sandbox interface {
	// Start provisions and starts an instance for spec. It returns once the
	// agent process has been started (not when it exits). ctx bounds only the
	// start; the instance's life is bounded by Spec.Limits.Timeout and
	// Destroy. On error nothing of the instance is left behind.
	Start(ctx context.Context, spec Spec) (Instance, error)
}

// An Instance is one running agent. Its methods are safe for concurrent use.
type Instance interface {
	// ID is unique among the driver's live and past instances.
	ID() string
	// Wait blocks until the agent's main process exits, the deadline passes
	// (every process is then killed) or ctx is done (ctx.Err() is returned
	// and the instance keeps running until Destroy). It may be called more
	// than once and returns the same status each time.
	Wait(ctx context.Context) (Exit, error)
	// Logs returns what the agent wrote to stdout and stderr so far, bounded
	// by Limits.LogBytes each. It may be called after Destroy.
	Logs() Logs
	// Destroy kills every process of the instance and removes all of its
	// state: filesystem, network, environment. It is idempotent: later calls
	// return nil. It must succeed even if ctx is already done, bounded by a
	// driver-defined grace period.
	Destroy(ctx context.Context) error
}

// Exit is how an instance ended.
type Exit struct {
	// Code is the main process's exit status; -1 when killed.
	Code int
	// TimedOut reports that Limits.Timeout passed and the instance was killed.
	TimedOut bool
	// Reason is a short human text, e.g. "exited", "killed at deadline",
	// "out of memory".
	Reason string
}

// Logs is what an agent wrote to its standard streams.
type Logs struct {
	Stdout, Stderr []byte
	// Truncated reports that a stream exceeded Limits.LogBytes.
	Truncated bool
}

// A Reaper is a [Sandbox] that can find and remove instances left behind by
// a host that crashed. The harness calls Reap once at start-up, before it
// starts any instance.
type Reaper interface {
	Reap(ctx context.Context) error
}
