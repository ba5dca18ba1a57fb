package ocisandbox

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxRelayConns bounds the connections one run may hold open to its
// gateway at once (each costs the host two sockets and two goroutines).
const maxRelayConns = 256

// newNetNS creates a network namespace with only lo up, pins it at path
// (a bind mount of the namespace file, which the OCI runtime joins by path)
// and returns a TCP listener on 127.0.0.1 inside it. The work happens on a
// locked OS thread that is discarded afterwards, so no other goroutine ever
// runs in the new namespace.
func newNetNS(path string) (net.Listener, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return nil, fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the goroutine exits with the thread locked, so the
		// runtime terminates the thread instead of reusing it.
		runtime.LockOSThread()
		ln, err := enterNewNetNS(path)
		done <- result{ln, err}
	}()
	r := <-done
	if r.err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
		return nil, r.err
	}
	return r.ln, nil
}

func enterNewNetNS(path string) (net.Listener, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("%w: unshare network namespace: %v", ErrHostUnsupported, err)
	}
	self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("pin network namespace at %s: %w", path, err)
	}
	if err := loUp(); err != nil {
		return nil, fmt.Errorf("bring lo up in the run's network namespace: %w", err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen in the run's network namespace: %w", err)
	}
	return ln, nil
}

// loUp sets IFF_UP on lo in the calling thread's network namespace.
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// removeNetNS unpins the namespace at path; it is freed once nothing is in
// it. A missing path is not an error.
func removeNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// relay accepts connections inside a run's namespace and joins each to a
// new connection from the host to the run's gateway.
type relay struct {
	ln     net.Listener
	target string      // host:port of the gateway
	tls    *tls.Config // non-nil for an https gateway

	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // both ends of every relayed connection
	inbound int                   // relayed connections, counted once
	closed  bool
}

func newRelay(ln net.Listener, target string, tlsConf *tls.Config) *relay {
	r := &relay{ln: ln, target: target, tls: tlsConf, conns: map[net.Conn]struct{}{}}
	r.wg.Go(r.serve)
	return r
}

func (r *relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		full := r.inbound >= maxRelayConns
		if !full {
			r.inbound++
		}
		r.mu.Unlock()
		if full || !r.track(c) {
			c.Close()
			continue
		}
		r.wg.Go(func() {
			r.join(c)
			r.mu.Lock()
			r.inbound--
			r.mu.Unlock()
		})
	}
}

// track registers c; it fails when the relay is closed.
func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *relay) join(in net.Conn) {
	defer r.untrack(in)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", r.target)
	cancel()
	if err != nil {
		return
	}
	if r.tls != nil {
		up = tls.Client(up, r.tls)
	}
	if !r.track(up) {
		up.Close()
		return
	}
	defer r.untrack(up)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, in)
		closeWrite(up)
		close(done)
	}()
	_, _ = io.Copy(in, up)
	closeWrite(in)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// close stops accepting, cuts every connection and waits for the relay's
// goroutines.
func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = map[net.Conn]struct{}{}
	r.mu.Unlock()
	r.ln.Close()
	for c := range conns {
		c.Close()
	}
	r.wg.Wait()
}
