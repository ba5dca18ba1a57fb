package compatool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/billing"
	"github.com/compatool/compatool/internal/gateway"
	"github.com/compatool/compatool/redact"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/storage"
)

const (
	// finishTimeout bounds the writes that record a run's end, which run
	// even when the run was cancelled, and the sandbox's destruction.
	finishTimeout = 30 * time.Second
	// waitGrace is how long past the run's deadline the harness waits for
	// the sandbox driver to report the kill.
	waitGrace = 30 * time.Second
)

func (h *Harness) work(base context.Context) {
	defer h.workers.Done()
	for {
		it, ok := h.queue.pop()
		if !ok {
			return
		}
		h.process(base, it)
	}
}

// process takes one queued run through its whole lifecycle.
func (h *Harness) process(base context.Context, it queued) {
	ctx, cancel := context.WithCancelCause(base)
	defer cancel(nil)
	// Claim the run. A run can be queued twice (submitted before Start, then
	// found queued by recovery) but is executed once.
	h.mu.Lock()
	if _, busy := h.running[it.run]; busy {
		h.mu.Unlock()
		return
	}
	h.running[it.run] = cancel
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.running, it.run)
		h.mu.Unlock()
		h.changed.notify()
	}()

	scope := auth.InternalScope(it.org)
	run, err := h.opts.Metadata.GetRun(ctx, scope, it.run)
	if err != nil {
		if !errors.Is(err, storage.ErrNotFound) { // not found: erased while queued
			h.log.Error("load queued run", "run", it.run, "err", err)
		}
		return
	}
	if run.State != storage.RunQueued {
		return // cancelled while queued, or already executed
	}
	run.State, run.StartedAt = storage.RunRunning, h.opts.Now().UTC()
	if err := h.opts.Metadata.UpdateRun(ctx, scope, run); err != nil {
		h.log.Error("mark run running", "run", run.ID, "err", err)
		return
	}
	h.changed.notify()
	o := h.execute(ctx, run)
	h.finish(context.WithoutCancel(ctx), run, o)
}

// outcome is what execute learned about a run.
type outcome struct {
	state     storage.RunState
	result    storage.Result
	events    []storage.Event
	goal      string
	sensitive redact.Sensitive
	started   time.Time
	ended     time.Time
}

func (o *outcome) fail(f storage.Failure, format string, args ...any) {
	o.state = storage.RunFailed
	o.result.Failure = f
	o.result.Detail = fmt.Sprintf(format, args...)
}

func (o *outcome) event(at time.Time, e storage.Event) {
	e.At = at.UTC()
	o.events = append(o.events, e)
}

func (o *outcome) lifecycle(at time.Time, phase, detail string) {
	o.event(at, storage.Event{Kind: storage.EventLifecycle, Lifecycle: &storage.Lifecycle{Phase: phase, Detail: detail}})
}

// execute runs the agent and grades it. It never panics: a panic anywhere
// in the run (a grader, an environment, a driver) is recovered after the
// deferred teardown has destroyed the sandbox and revoked the token, and
// the run fails with an infrastructure reason.
func (h *Harness) execute(ctx context.Context, run storage.Run) (o outcome) {
	o.started = h.opts.Now()
	defer func() {
		if p := recover(); p != nil {
			// A panic value may quote the goal or a secret: logs get it redacted.
			h.log.Error("panic while executing a run", "run", run.ID, "panic", h.opts.Redactor.String(fmt.Sprint(p), o.sensitive), "stack", string(debug.Stack()))
			o.fail(storage.FailureInfrastructure, "the host failed while executing the run (panic: %v)", p)
		}
		o.ended = h.opts.Now()
	}()

	sub, err := h.opts.Metadata.GetSubmission(ctx, auth.InternalScope(run.Org), run.Submission)
	if err != nil {
		o.fail(storage.FailureInfrastructure, "load submission %s: %v", run.Submission, err)
		return o
	}
	task, err := h.opts.Metadata.GetTask(ctx, run.Task)
	if err != nil {
		o.fail(storage.FailureInfrastructure, "load task %s: %v", run.Task, err)
		return o
	}
	if err := servable(task, Month(o.started)); err != nil {
		o.fail(storage.FailureInfrastructure, "%v", err)
		return o
	}
	plain, err := h.opts.Keys.Open(ctx, string(task.ID), task.Sealed)
	if err != nil {
		o.fail(storage.FailureInfrastructure, "open task %s: %v", task.ID, err)
		return o
	}
	var content TaskContent
	if err := json.Unmarshal(plain, &content); err != nil {
		o.fail(storage.FailureInfrastructure, "decode task %s: %v", task.ID, err)
		return o
	}
	o.goal, o.sensitive.Goal = content.Goal, content.Goal

	env := h.opts.Environments[task.Environment]
	if env == nil {
		o.fail(storage.FailureInfrastructure, "environment %q is not registered", task.Environment)
		return o
	}
	sess, err := env.Open(ctx, content)
	if err != nil {
		o.fail(storage.FailureInfrastructure, "open environment %s: %v", task.Environment, err)
		return o
	}
	if sess.Close != nil {
		defer func() {
			if err := sess.Close(); err != nil {
				h.log.Warn("close task session", "run", run.ID, "err", err)
			}
		}()
	}
	backend := gateway.Backend{Server: sess.Server}
	if u := sess.Upstream; u != nil {
		backend.Upstream = &gateway.Upstream{URL: u.URL, Header: u.Header, HTTPClient: u.HTTPClient}
		for _, vs := range u.Header {
			o.sensitive.Secrets = append(o.sensitive.Secrets, vs...)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sess.Secrets)) {
		o.sensitive.Secrets = append(o.sensitive.Secrets, sess.Secrets[k])
	}

	gw, token, err := h.gw.Open(ctx, string(run.ID), backend)
	if err != nil {
		o.fail(storage.FailureInfrastructure, "open MCP gateway: %v", err)
		return o
	}
	o.sensitive.Secrets = append(o.sensitive.Secrets, token)
	defer gw.Close() // revokes the token on every path

	env2 := make(map[string]string, len(sess.Secrets)+3)
	maps.Copy(env2, sess.Secrets)
	env2[sandbox.EnvMCPToken] = token
	env2[sandbox.EnvRunID] = string(run.ID)
	env2[sandbox.EnvGoal] = content.Goal
	spec := sandbox.Spec{
		RunID:  string(run.ID),
		Image:  sub.Image,
		Env:    env2,
		MCPURL: h.gwURL + gw.Path(),
		Limits: h.opts.Limits,
	}
	// The agent's time starts with the sandbox's start: a fast agent may be
	// done before Start returns.
	starting := h.opts.Now()
	inst, err := h.opts.Sandbox.Start(ctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			h.cancelled(ctx, &o)
			return o
		}
		if errors.Is(err, sandbox.ErrImageNotFound) {
			o.fail(storage.FailureAgent, "start sandbox: %v", err)
		} else {
			o.fail(storage.FailureInfrastructure, "start sandbox: %v", err)
		}
		return o
	}
	started := h.opts.Now()
	o.lifecycle(started, "sandbox_started", inst.ID())
	destroyed := false
	destroy := func() {
		if destroyed {
			return
		}
		destroyed = true
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
		defer cancel()
		if err := inst.Destroy(dctx); err != nil {
			h.log.Error("destroy sandbox", "run", run.ID, "instance", inst.ID(), "err", err)
			o.fail(storage.FailureInfrastructure, "destroy sandbox: %v", err)
			return
		}
		o.lifecycle(h.opts.Now(), "sandbox_destroyed", "")
	}
	defer destroy()

	// The driver enforces the deadline; this bound only keeps a broken
	// driver from holding the worker forever.
	waitCtx, stop := context.WithTimeout(ctx, h.opts.Limits.Timeout+waitGrace)
	exit, waitErr := inst.Wait(waitCtx)
	stop()
	ended := h.opts.Now()
	logs := inst.Logs()
	destroy()
	gw.Close()

	calls := gw.Calls()
	toolCalls := make([]storage.ToolCall, len(calls))
	for i, c := range calls {
		tc := c.ToolCall
		toolCalls[i] = tc
		o.event(c.At, storage.Event{Kind: storage.EventToolCall, ToolCall: &tc})
	}
	for _, l := range []struct {
		stream string
		data   []byte
	}{{"stdout", logs.Stdout}, {"stderr", logs.Stderr}} {
		if len(l.data) > 0 {
			o.event(ended, storage.Event{Kind: storage.EventLog, Log: &storage.Log{Stream: l.stream, Data: string(l.data), Truncated: logs.Truncated}})
		}
	}
	o.result.ToolCalls = len(calls)
	o.result.AgentTime = ended.Sub(starting)
	o.result.Exit = storage.Exit{Code: exit.Code, TimedOut: exit.TimedOut, Reason: exit.Reason}
	switch {
	case o.state == storage.RunFailed: // teardown failed
	case waitErr != nil && ctx.Err() != nil:
		h.cancelled(ctx, &o)
	case errors.Is(waitErr, context.DeadlineExceeded):
		o.fail(storage.FailureInfrastructure, "the sandbox did not stop at the run's deadline of %s", h.opts.Limits.Timeout)
	case waitErr != nil:
		o.fail(storage.FailureInfrastructure, "wait for sandbox: %v", waitErr)
	case exit.TimedOut:
		o.fail(storage.FailureAgent, "the agent ran past its deadline of %s and was killed", h.opts.Limits.Timeout)
	case exit.Code != 0:
		o.fail(storage.FailureAgent, "the agent exited with status %d (%s)", exit.Code, exit.Reason)
	case sess.Grade == nil:
		o.fail(storage.FailureInfrastructure, "environment %s has no grader", task.Environment)
	default:
		g, err := sess.Grade(ctx, toolCalls)
		if err != nil {
			o.fail(storage.FailureInfrastructure, "grade: %v", err)
			break
		}
		o.state = storage.RunFinished
		o.result.Passed, o.result.Score, o.result.Detail = g.Passed, g.Score, g.Detail
		o.lifecycle(h.opts.Now(), "graded", fmt.Sprintf("passed=%t score=%.3f", g.Passed, g.Score))
	}
	return o
}

// cancelled records why a run was cancelled: by Cancel or Erase (the
// agent's run is cancelled) or by the host shutting down (an infrastructure
// failure).
func (h *Harness) cancelled(ctx context.Context, o *outcome) {
	if errors.Is(context.Cause(ctx), errShutdown) {
		o.fail(storage.FailureInfrastructure, "%v", errShutdown)
		return
	}
	o.state = storage.RunCancelled
	o.result.Detail = "the run was cancelled"
}

// finish redacts and stores the transcript, stores the result and records
// usage. Redaction happens here, before the first byte of the run's
// transcript or result is written anywhere.
func (h *Harness) finish(ctx context.Context, run storage.Run, o outcome) {
	ctx, cancel := context.WithTimeout(ctx, finishTimeout)
	defer cancel()
	scope := auth.InternalScope(run.Org)
	if o.state == "" {
		o.fail(storage.FailureInfrastructure, "the run ended without an outcome")
	}
	slices.SortStableFunc(o.events, func(a, b storage.Event) int { return a.At.Compare(b.At) })
	for i := range o.events {
		o.events[i].Seq = i + 1
	}
	tr := storage.Transcript{
		Schema: storage.TranscriptSchema, Run: run.ID, Submission: run.Submission, Org: string(run.Org),
		Task: run.Task, Goal: o.goal, StartedAt: o.started.UTC(), FinishedAt: o.ended.UTC(),
		Exit: o.result.Exit, Failure: o.result.Failure, Events: o.events,
	}
	red := h.opts.Redactor
	o.result.Detail = red.String(o.result.Detail, o.sensitive)
	o.result.Exit.Reason = red.String(o.result.Exit.Reason, o.sensitive)
	stored, err := red.Redact(&tr, o.sensitive)
	if err == nil {
		err = h.opts.Transcripts.Put(ctx, scope, stored)
	}
	if err != nil {
		h.log.Error("store transcript", "run", run.ID, "err", red.String(err.Error(), o.sensitive))
		if o.state != storage.RunCancelled {
			o.fail(storage.FailureInfrastructure, "the transcript could not be stored")
		}
	}

	run.State, run.FinishedAt = o.state, h.opts.Now().UTC()
	res := o.result
	run.Result = &res
	if err := h.opts.Metadata.UpdateRun(ctx, scope, run); err != nil {
		if errors.Is(err, storage.ErrNotFound) { // erased while it ran: leave nothing behind
			if err := h.opts.Transcripts.Delete(ctx, scope, run.ID); err != nil {
				h.log.Error("delete transcript of an erased run", "run", run.ID, "err", err)
			}
			return
		}
		h.log.Error("store run result", "run", run.ID, "err", err)
		return
	}
	if h.opts.Meter != nil {
		h.record(ctx, billing.Usage{
			ID: string(run.ID), Customer: string(run.Org), At: run.FinishedAt,
			AgentSeconds: res.AgentTime.Seconds(), ToolCalls: res.ToolCalls,
		})
	}
	h.log.Info("run ended", "run", run.ID, "state", run.State, "failure", res.Failure, "passed", res.Passed)
}

// record records usage, retrying: Meter.Record is idempotent.
func (h *Harness) record(ctx context.Context, u billing.Usage) {
	err := h.opts.Meter.Record(ctx, u)
	for attempt := 1; attempt < 3 && err != nil && !errors.Is(err, billing.ErrInvalid); attempt++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
		err = h.opts.Meter.Record(ctx, u)
	}
	if err != nil {
		h.log.Error("record usage", "run", u.ID, "err", err)
	}
}
