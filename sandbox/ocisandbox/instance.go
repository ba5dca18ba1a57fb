package ocisandbox

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/compatool/compatool/sandbox"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Start provisions a run of spec.Image (an image ID from Import) and returns
// once its agent process runs. On error nothing of the run is left.
func (s *Sandbox) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	began := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ocisandbox: start: %w", err)
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("ocisandbox: %w", err)
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errors.New("ocisandbox: start: the Sandbox is closed")
	}
	// Held until teardown, so that RemoveImage leaves the image's root
	// filesystem to the run.
	im, err := s.acquireImage(spec.Image)
	if err != nil {
		return nil, err
	}
	limits := spec.Limits.WithDefaults()
	id := fmt.Sprintf("%s-%s-%d", runIDLabel(spec.RunID), s.hostID, s.seq.Add(1))
	runDir := filepath.Join(s.hostDir, "runs", id)
	inst := &instance{
		s: s, id: id, runDir: runDir, image: im,
		rt:     s.runtimeClient(filepath.Join(runDir, "runtime.log")),
		stdout: sandbox.NewLogBuffer(limits.LogBytes),
		stderr: sandbox.NewLogBuffer(limits.LogBytes),
		done:   make(chan struct{}),
	}
	if err := inst.provision(ctx, im, spec, limits); err != nil {
		// provision has stopped the runtime if it launched it; teardown
		// removes the rest, and whatever a stuck runtime made.
		if terr := inst.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
		return nil, fmt.Errorf("ocisandbox: start %s: %w", id, err)
	}
	s.mu.Lock()
	s.live[id] = inst
	s.mu.Unlock()
	inst.mu.Lock()
	if !inst.ended {
		inst.timer = time.AfterFunc(max(limits.Timeout-time.Since(began), 0), inst.deadline)
	}
	inst.mu.Unlock()
	s.log.Debug("ocisandbox: instance started", "instance", id, "image", im.id, "took", time.Since(began))
	return inst, nil
}

var unsafeLabel = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// runIDLabel makes a run id usable in container ids and paths.
func runIDLabel(runID string) string {
	l := unsafeLabel.ReplaceAllString(runID, "_")
	if len(l) > 40 {
		l = l[:40]
	}
	return l
}

type instance struct {
	s      *Sandbox
	id     string
	runDir string
	image  *image // acquired; released by teardown
	rt     *runc.Runc
	stdout *sandbox.LogBuffer
	stderr *sandbox.LogBuffer
	relay  *relay
	// stopRuntime kills the runtime process (not the container); set
	// before the runtime is launched.
	stopRuntime context.CancelFunc

	mu        sync.Mutex
	timer     *time.Timer
	timedOut  bool
	destroyed bool
	ended     bool // the runtime process has returned

	done chan struct{} // closed when the runtime process has ended
	exit sandbox.Exit  // set before done is closed
	// ran reports that the container's process existed (its pid file was
	// written); startMsg is the runtime's explanation when it did not. Both
	// are set before done is closed, before teardown removes the run dir.
	ran      bool
	startMsg string

	teardownOnce sync.Once
	teardownErr  error
	destroyOnce  sync.Once
	destroyErr   error
}

// provision builds and starts the container; the caller tears down on error.
func (i *instance) provision(ctx context.Context, im *image, spec sandbox.Spec, limits sandbox.Limits) error {
	s := i.s
	// The runtime moves the container into its cgroups some 8 ms from now.
	go func() { _ = primeCgroupAttach() }()
	if err := os.Mkdir(i.runDir, 0o711); err != nil {
		return err
	}
	rootfs, err := s.mountLayer(i.runDir, im.rootfs)
	if err != nil {
		return err
	}
	netns := filepath.Join(i.runDir, "netns")
	ln, err := newNetNS(netns)
	if err != nil {
		return err
	}
	u, _ := url.Parse(spec.MCPURL) // Validate checked it.
	var tlsConf *tls.Config
	if u.Scheme == "https" {
		tlsConf = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	i.relay = newRelay(ln, hostPort(u), tlsConf)
	inside := url.URL{Scheme: "http", Host: ln.Addr().String(), Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery}

	env := mergeEnv(im.config.Config.Env, spec.Env, inside.String())
	cfg, err := buildSpec(im, runSpec{
		id: i.id, rootfs: rootfs, netns: netns, env: env, limits: limits,
		idShift: s.idShift, cgroup: s.cgroupPath(i.id),
	})
	if err != nil {
		return err
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(i.runDir, "config.json"), b, 0o600); err != nil {
		return err
	}
	return i.run(ctx)
}

// run starts the runtime in the foreground (it stays the container's
// parent and reports its exit) and waits until the container's process
// exists, the runtime fails, or ctx is done. In the last case the runtime
// may be creating the container at that very moment, so run stops it (see
// abort) before it returns: nothing the runtime makes may outlive Start.
func (i *instance) run(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	pidFile := filepath.Join(i.runDir, "pid")
	watch, err := watchFile(pidFile)
	if err != nil {
		return err
	}
	defer watch.close()
	rctx, stop := context.WithCancel(context.Background())
	i.stopRuntime = stop
	go func() {
		status, err := i.rt.Run(rctx, i.id, i.runDir, &runc.CreateOpts{IO: runIO{i.stdout, i.stderr}, PidFile: pidFile})
		stop()
		i.finish(status, err)
	}()
	select {
	case <-watch.ready:
		return nil
	case <-i.done:
		if i.ran { // a fast agent: it ran and ended before the watch fired
			return nil
		}
		return i.startError()
	case <-ctx.Done():
		i.abort(watch.ready)
		return ctx.Err()
	}
}

// abort ends a start that was given up after the runtime was launched, the
// way Destroy ends a run: it lets the runtime get as far as the container's
// process and kills every process of the container (or lets the runtime
// fail), then waits for the runtime to return, which tears the run down.
// Each step is bounded by Options.DestroyGrace; a runtime that overruns it
// is killed itself, and if even that does not end it, the caller's
// teardown kills the run's cgroup and force-deletes the container.
func (i *instance) abort(ready <-chan struct{}) {
	i.s.log.Debug("ocisandbox: start cancelled; stopping the runtime", "instance", i.id)
	grace := time.NewTimer(i.s.opts.DestroyGrace)
	defer grace.Stop()
	select {
	case <-i.done:
		return
	case <-ready:
		i.s.log.Debug("ocisandbox: the container started after the cancellation; killing it", "instance", i.id)
		i.kill()
	case <-grace.C:
		i.s.log.Warn("ocisandbox: the runtime neither started nor failed within the grace period after a cancelled start; killing it", "instance", i.id, "grace", i.s.opts.DestroyGrace)
		i.stopRuntime()
	}
	grace.Reset(i.s.opts.DestroyGrace)
	select {
	case <-i.done:
		return
	case <-grace.C:
		i.stopRuntime()
	}
	grace.Reset(i.s.opts.DestroyGrace)
	select {
	case <-i.done:
	case <-grace.C:
		i.s.log.Error("ocisandbox: the killed runtime did not return; removing the run's cgroup and container without it", "instance", i.id)
	}
}

// startError explains why the runtime ended before the container ran.
func (i *instance) startError() error {
	msg := i.startMsg
	name := filepath.Base(i.s.runtime)
	if strings.Contains(msg, "hybrid") || strings.Contains(msg, "not supported") {
		return fmt.Errorf("%w: %s: %s; use runc on hybrid cgroup hosts (Options.Runtime = \"runc\")", ErrRuntimeUnsupported, name, msg)
	}
	return fmt.Errorf("%s could not start the container: %s", name, msg)
}

// runtimeMessage returns the error lines of the runtime's JSON log, or its
// stderr if the log has none.
func runtimeMessage(logFile, stderr string) string {
	var msgs []string
	if f, err := os.Open(logFile); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
		for sc.Scan() {
			var line struct{ Level, Msg string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && (line.Level == "error" || line.Level == "fatal") {
				msgs = append(msgs, line.Msg)
			}
		}
	}
	if len(msgs) == 0 {
		return strings.TrimSpace(stderr)
	}
	return strings.Join(msgs, "; ")
}

// finish records how the runtime ended, releases the run's resources and
// wakes Wait.
func (i *instance) finish(status int, err error) {
	i.mu.Lock()
	var exit sandbox.Exit
	switch {
	case i.timedOut:
		exit = sandbox.Exit{Code: -1, TimedOut: true, Reason: "killed at deadline"}
	case i.destroyed:
		exit = sandbox.Exit{Code: -1, Reason: "killed by Destroy"}
	case status > 128 && status <= 128+64:
		exit = sandbox.Exit{Code: -1, Reason: "killed by signal " + unix.SignalName(unix.Signal(status-128)) + " (out of memory if SIGKILL)"}
	case status == -1 || (err != nil && status == 0):
		exit = sandbox.Exit{Code: -1, Reason: fmt.Sprintf("runtime failed: %v", err)}
	default:
		exit = sandbox.Exit{Code: status, Reason: "exited"}
	}
	i.ended = true
	if i.timer != nil {
		i.timer.Stop()
	}
	i.mu.Unlock()
	if _, serr := os.Stat(filepath.Join(i.runDir, "pid")); serr == nil {
		i.ran = true
	} else {
		i.startMsg = runtimeMessage(filepath.Join(i.runDir, "runtime.log"), i.stderr.String())
		if i.startMsg == "" {
			i.startMsg = fmt.Sprintf("the runtime exited with status %d (%v) and said nothing", status, err)
		}
	}
	// Resources go as soon as the run ends, whether or not Destroy comes.
	i.teardown()
	i.exit = exit
	close(i.done)
}

func (i *instance) deadline() {
	i.mu.Lock()
	if i.ended {
		i.mu.Unlock()
		return
	}
	i.timedOut = true
	i.mu.Unlock()
	i.s.log.Info("ocisandbox: deadline passed; killing instance", "instance", i.id)
	i.kill()
}

// kill sends SIGKILL to every process of the container.
func (i *instance) kill() {
	ctx, cancel := context.WithTimeout(context.Background(), i.s.opts.DestroyGrace)
	defer cancel()
	if err := i.rt.Kill(ctx, i.id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil {
		// Killing init alone ends its pid namespace, and with it every
		// process; --all may fail once init is already gone.
		_ = i.rt.Kill(ctx, i.id, int(unix.SIGKILL), nil)
	}
}

// teardown removes the container and everything provisioned for it. It is
// safe to call more than once and from several goroutines.
func (i *instance) teardown() error {
	i.teardownOnce.Do(func() {
		var errs []error
		ctx, cancel := context.WithTimeout(context.Background(), i.s.opts.DestroyGrace)
		defer cancel()
		// A foreground runtime deletes its container's state when the
		// container ends; only a container it left behind needs a delete.
		if _, err := os.Stat(filepath.Join(i.rt.Root, i.id)); !errors.Is(err, fs.ErrNotExist) {
			if err := i.rt.Delete(ctx, i.id, &runc.DeleteOpts{Force: true}); err != nil && !notExist(err) {
				errs = append(errs, fmt.Errorf("delete container: %w", err))
			}
		}
		if i.relay != nil {
			i.relay.close()
		}
		errs = append(errs, removeCgroup(i.s.cgroupPath(i.id)))
		errs = append(errs, unmountLayer(i.runDir), removeNetNS(filepath.Join(i.runDir, "netns")))
		if err := os.RemoveAll(i.runDir); err != nil {
			errs = append(errs, err)
		}
		i.s.releaseImage(i.image)
		i.teardownErr = errors.Join(errs...)
		if i.teardownErr != nil {
			i.s.log.Error("ocisandbox: teardown incomplete; Reap from a new Sandbox will finish it", "instance", i.id, "err", i.teardownErr)
		}
	})
	return i.teardownErr
}

// notExist reports a runtime error about a container that is already gone.
func notExist(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "not exist") || strings.Contains(msg, "not found")
}

func (i *instance) ID() string { return i.id }

func (i *instance) Wait(ctx context.Context) (sandbox.Exit, error) {
	select {
	case <-i.done:
		return i.exit, nil
	default:
	}
	select {
	case <-i.done:
		return i.exit, nil
	case <-ctx.Done():
		return sandbox.Exit{}, ctx.Err()
	}
}

func (i *instance) Logs() sandbox.Logs {
	out, outCut := i.stdout.Snapshot()
	errs, errCut := i.stderr.Snapshot()
	return sandbox.Logs{Stdout: out, Stderr: errs, Truncated: outCut || errCut}
}

// Destroy kills every process of the run and removes all of its state,
// waiting at most Options.DestroyGrace for the container to die, whatever
// ctx says.
func (i *instance) Destroy(context.Context) error {
	i.destroyOnce.Do(func() {
		i.mu.Lock()
		ended := i.ended
		i.destroyed = !ended
		i.mu.Unlock()
		// Once the runtime has returned, its container's init is dead (and
		// with it the pid namespace) and finish has torn the rest down.
		if !ended {
			i.kill()
		}
		t := time.NewTimer(i.s.opts.DestroyGrace)
		defer t.Stop()
		select {
		case <-i.done:
			i.destroyErr = i.teardown()
		case <-t.C:
			i.destroyErr = fmt.Errorf("ocisandbox: destroy %s: the runtime did not report the container's end within %v; Reap will remove what is left", i.id, i.s.opts.DestroyGrace)
		}
		i.s.forget(i.id)
	})
	if i.destroyErr != nil {
		return i.destroyErr
	}
	return nil
}

// runIO gives the runtime's (and so the container's) stdout and stderr to
// bounded buffers and its stdin /dev/null.
type runIO struct{ stdout, stderr *sandbox.LogBuffer }

func (runIO) Close() error          { return nil }
func (runIO) Stdin() io.WriteCloser { return nil }
func (runIO) Stdout() io.ReadCloser { return nil }
func (runIO) Stderr() io.ReadCloser { return nil }
func (r runIO) Set(cmd *exec.Cmd)   { cmd.Stdout, cmd.Stderr = r.stdout, r.stderr }

func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// mergeEnv returns the image's environment overridden by the spec's, plus
// the driver's MCP URL, with a default PATH.
func mergeEnv(image []string, spec map[string]string, mcpURL string) []string {
	var env []string
	seen := map[string]int{}
	set := func(k, v string) {
		if j, ok := seen[k]; ok {
			env[j] = k + "=" + v
			return
		}
		seen[k] = len(env)
		env = append(env, k+"="+v)
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	for _, kv := range image {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	for _, k := range slices.Sorted(maps.Keys(spec)) {
		set(k, spec[k])
	}
	set(sandbox.EnvMCPURL, mcpURL)
	return env
}
