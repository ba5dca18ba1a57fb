package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/compatool/compatool/examples/agents/agentimage"
	"github.com/compatool/compatool/examples/server/app"
)

// The server binary and the reference agent's image archive, built once by
// TestMain.
var (
	serverBin    string
	agentArchive string
	agentImageID string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "compatool-server-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		serverBin = filepath.Join(dir, "server")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", serverBin, ".").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build the server: %v\n%s", err, out)
			return 1
		}
		agentArchive = filepath.Join(dir, "notesagent.tar")
		if agentImageID, err = agentimage.Build(ctx, agentimage.NotesAgent, agentArchive, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// server is a running server binary.
type server struct {
	t    testing.TB
	data string
	url  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited

	mu   sync.Mutex
	logs bytes.Buffer
}

// startServer starts the server binary on a free loopback port with data
// as its data directory and waits until it listens. env holds extra
// environment variables.
func startServer(t testing.TB, data string, env []string, flags ...string) *server {
	t.Helper()
	s := &server{t: t, data: data, done: make(chan struct{})}
	args := append([]string{"-addr", "127.0.0.1:0", "-data", data, "-log-level", "debug"}, flags...)
	s.cmd = exec.Command(serverBin, args...)
	s.cmd.Env = append(append(os.Environ(), "COMPATOOL_RATE=100000"), env...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			s.mu.Lock()
			s.logs.Write(line)
			s.logs.WriteByte('\n')
			s.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" {
				addr <- rec.Addr
			}
		}
		s.cmd.Wait()
	}()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
		if t.Failed() {
			t.Logf("server log:\n%s", s.log())
		}
	})
	select {
	case a := <-addr:
		s.url = "http://" + a
	case <-s.done:
		t.Fatalf("the server exited before listening:\n%s", s.log())
	case <-time.After(2 * time.Minute):
		t.Fatalf("the server did not listen within 2 minutes:\n%s", s.log())
	}
	return s
}

func (s *server) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// stop sends SIGTERM and waits for the process to exit.
func (s *server) stop() int {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(2 * time.Minute):
		s.t.Fatalf("the server did not stop within 2 minutes")
	}
	return s.cmd.ProcessState.ExitCode()
}

// token mints a token with the server binary's token command.
func (s *server) token(org string, staff bool) string {
	s.t.Helper()
	args := []string{"token", "-data", s.data, "-sub", "user_of_" + cmpOr(org, "staff")}
	if org != "" {
		args = append(args, "-org", org)
	}
	if staff {
		args = append(args, "-staff")
	}
	out, err := exec.Command(serverBin, args...).Output()
	if err != nil {
		s.t.Fatalf("server token: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) code() string {
	var e struct{ Error struct{ Code string } }
	if json.Unmarshal(r.body, &e) != nil {
		return fmt.Sprintf("not a JSON error: %.200q", r.body)
	}
	return e.Error.Code
}

func (r response) String() string { return fmt.Sprintf("%d %.500s", r.status, r.body) }

var client = &http.Client{Timeout: 5 * time.Minute}

// do sends a request; header holds name, value pairs.
func (s *server) do(method, path, token, contentType string, body io.Reader, header ...string) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

func (s *server) get(path, token string, header ...string) response {
	s.t.Helper()
	return s.do("GET", path, token, "", nil, header...)
}

// decode decodes r's body into v, failing the test unless r has status.
func decode[T any](t testing.TB, r response, status int) T {
	t.Helper()
	var v T
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %T: %v: %s", v, err, r.body)
	}
	return v
}

// upload submits the reference agent's archive for the notes task set.
func (s *server) upload(token, agentName string, public bool) app.Submission {
	s.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	meta, _ := json.Marshal(map[string]any{"agent_name": agentName, "task_set": app.NotesSet, "public": public})
	w, _ := mw.CreateFormField("submission")
	w.Write(meta)
	w, _ = mw.CreateFormFile("image", "notesagent.tar")
	f, err := os.Open(agentArchive)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		s.t.Fatal(err)
	}
	mw.Close()
	return decode[app.Submission](s.t, s.do("POST", "/v1/submissions", token, mw.FormDataContentType(), &buf), http.StatusCreated)
}

// uploadBytes posts a multipart submission whose image part is archive.
func (s *server) uploadBytes(token, submission string, archive []byte) response {
	s.t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	w, _ := mw.CreateFormField("submission")
	io.WriteString(w, submission)
	w, _ = mw.CreateFormFile("image", "image.tar")
	w.Write(archive)
	mw.Close()
	return s.do("POST", "/v1/submissions", token, mw.FormDataContentType(), &buf)
}

// submitByID submits an image the organisation uploaded before.
func (s *server) submitByID(token, agentName, image string) response {
	s.t.Helper()
	body, _ := json.Marshal(map[string]any{"agent_name": agentName, "task_set": app.NotesSet, "image": image})
	return s.do("POST", "/v1/submissions", token, "application/json", bytes.NewReader(body))
}

// wait returns the submission's runs once all have ended.
func (s *server) wait(token, sub string) []app.Run {
	s.t.Helper()
	for range 10 {
		runs := decode[app.List[app.Run]](s.t, s.get("/v1/runs?submission="+sub+"&wait=60s", token), http.StatusOK)
		ended := true
		for _, r := range runs.Items {
			ended = ended && (r.State == "finished" || r.State == "failed" || r.State == "cancelled")
		}
		if ended {
			return runs.Items
		}
	}
	s.t.Fatalf("the runs of %s did not end within 10 minutes", sub)
	return nil
}
