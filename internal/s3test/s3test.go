// Package s3test starts a real S3 server for tests: versitygw
// (github.com/versity/versitygw) with its posix backend in a temporary
// directory, listening on a loopback port, with signature checking on. Only
// tests import it.
package s3test

import (
	"bytes"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Install is the command that installs the server binary the tests need.
const Install = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Server is a running versitygw.
type Server struct {
	// Endpoint is the server's base URL, "http://127.0.0.1:<port>".
	Endpoint string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// Region is the region the server signs for.
	Region string
	// Dir is the backend directory: every bucket is a directory in it, and
	// every object a file.
	Dir string
}

// Binary returns the path of the versitygw binary: from PATH, or else from
// the bin directory of GOPATH.
func Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", "versitygw")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found in PATH or in GOPATH/bin; install it with: %s", Install)
}

// Start starts a server and stops it when the test ends. It fails the test
// (never skips it) if versitygw is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{AccessKey: "compatool-test", SecretKey: "compatool-test-secret-key", Region: "us-east-1", Dir: t.TempDir()}
	// The port is free when picked but may be taken before the server
	// binds it; then the server exits and another port is tried.
	var errs []error
	for range 3 {
		err := s.start(t, bin)
		if err == nil {
			return s
		}
		errs = append(errs, err)
	}
	t.Fatalf("s3test: starting versitygw: %v", errors.Join(errs...))
	return nil
}

func (s *Server) start(t testing.TB, bin string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	s.Endpoint = "http://" + addr

	cmd := exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", addr, "--quiet", "posix", s.Dir)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	// versitygw prints its banner before it listens, so readiness is the
	// port answering HTTP.
	probe := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("versitygw exited (%v) before it served: %s", err, out.String())
		case <-deadline:
			stop()
			return fmt.Errorf("versitygw did not answer on %s within 30s: %s", addr, out.String())
		case <-tick.C:
		}
		resp, err := probe.Get(s.Endpoint)
		if err != nil {
			continue
		}
		resp.Body.Close()
		t.Cleanup(stop)
		return nil
	}
}

// syncBuffer collects the server's output for error messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() > 64<<10 {
		return len(p), nil
	}
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
