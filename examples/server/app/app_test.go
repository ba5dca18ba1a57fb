package app

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/examples/agents/agentimage"
	"github.com/compatool/compatool/storage"
)

// testApp is an App on the in-memory backends, served on a loopback port.
type testApp struct {
	*App
	t       *testing.T
	url     string
	imports *countingImporter
}

type countingImporter struct {
	next    importer
	mu      sync.Mutex
	n       int
	removed []string
	// onRemove, if set before the first request, is called on each Remove.
	onRemove func(id string)
}

func (c *countingImporter) Remove(ctx context.Context, id string) error {
	if c.onRemove != nil {
		c.onRemove(id)
	}
	c.mu.Lock()
	c.removed = append(c.removed, id)
	c.mu.Unlock()
	return c.next.Remove(ctx, id)
}

func (c *countingImporter) removals() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.removed)
}

func (c *countingImporter) Import(ctx context.Context, file, id string) error {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.next.Import(ctx, file, id)
}

func (c *countingImporter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func newTestApp(t *testing.T, mod func(*Config)) *testApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		DataDir: t.TempDir(), GatewayURL: "http://" + ln.Addr().String(),
		Metadata: MetadataMem, Transcripts: TranscriptsMem, Sandbox: SandboxMem,
		MaxBodyBytes: 1 << 10, MaxUploadBytes: 1 << 20, MaxImageBytes: 1 << 20,
		RatePerOrg: 1000, RunTimeout: 20 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ta := &testApp{App: a, t: t, imports: &countingImporter{next: a.importer}}
	a.importer = ta.imports
	srv := httptest.NewUnstartedServer(a.Handler())
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	ta.url = srv.URL
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return ta
}

func (ta *testApp) token(org auth.OrgID, staff bool) string {
	ta.t.Helper()
	tok, err := MintToken(ta.cfg.DataDir, "", TokenRequest{Subject: "user_" + string(org), Org: org, Staff: staff})
	if err != nil {
		ta.t.Fatal(err)
	}
	return tok
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) errorCode() string {
	var b errorBody
	if err := json.Unmarshal(r.body, &b); err != nil {
		return fmt.Sprintf("not a JSON error: %q", r.body)
	}
	return b.Error.Code
}

func (ta *testApp) do(method, path, token, contentType string, body io.Reader, header ...string) response {
	ta.t.Helper()
	req, err := http.NewRequest(method, ta.url+path, body)
	if err != nil {
		ta.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ta.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ta.t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// multipartBody returns a submission upload: the JSON part, then the image.
func multipartBody(t *testing.T, submission string, image []byte) (string, io.Reader) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if submission != "" {
		w, err := mw.CreateFormField("submission")
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, submission)
	}
	if image != nil {
		w, err := mw.CreateFormFile("image", "image.tar")
		if err != nil {
			t.Fatal(err)
		}
		w.Write(image)
	}
	mw.Close()
	return mw.FormDataContentType(), &buf
}

// archive returns img as a `docker save` archive.
func archive(t *testing.T, img v1.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := tarball.Write(name.MustParseReference("compatool/test:latest"), img, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func goodImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := agentimage.Image([]byte("\x7fELF not really"), runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// layerImage returns an image with one layer holding hdrs (empty files).
func layerImage(t *testing.T, hdrs ...*tar.Header) v1.Image {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	b := raw.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return withConfig(t, mustAppend(t, l), func(cf *v1.ConfigFile) {})
}

func mustAppend(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func withConfig(t *testing.T, img v1.Image, mod func(*v1.ConfigFile)) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/agent"}
	mod(cf)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// storedNothing fails the test if org has any submission or run, if an
// upload file is left, or if an image was imported.
func (ta *testApp) storedNothing(org auth.OrgID) {
	ta.t.Helper()
	subs, err := ta.meta.ListSubmissions(context.Background(), auth.InternalScope(org), storage.Page{})
	if err != nil || len(subs) > 0 {
		ta.t.Errorf("stored submissions: %v, %v", subs, err)
	}
	for _, st := range []storage.RunState{storage.RunQueued, storage.RunRunning, storage.RunFinished, storage.RunFailed, storage.RunCancelled} {
		if runs, err := ta.meta.RunsInState(context.Background(), st, storage.Page{}); err != nil || len(runs) > 0 {
			ta.t.Errorf("stored %s runs: %v, %v", st, runs, err)
		}
	}
	if left, _ := os.ReadDir(ta.uploads); len(left) > 0 {
		ta.t.Errorf("uploads left behind: %v", left)
	}
	if n := ta.imports.count(); n > 0 {
		ta.t.Errorf("%d images imported", n)
	}
}

func TestBadInput(t *testing.T) {
	ta := newTestApp(t, nil)
	const org = "org_a"
	tok := ta.token(org, false)

	key, err := loadDevKey(filepath.Join(ta.cfg.DataDir, DevKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	past, err := devauth.New(key, &devauth.Options{Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	expired, err := past.Issue(devauth.Claims{Subject: "user_a", Org: org})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := devauth.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := stranger.Issue(devauth.Claims{Subject: "user_a", Org: org})
	if err != nil {
		t.Fatal(err)
	}
	noOrg, err := MintToken(ta.cfg.DataDir, "", TokenRequest{Subject: "user_x"})
	if err != nil {
		t.Fatal(err)
	}

	good := archive(t, goodImage(t))
	sub := `{"agent_name": "a", "task_set": "notes"}`
	upload := func(submission string, image []byte) (string, io.Reader) { return multipartBody(t, submission, image) }
	twoImages := func() []byte {
		var buf bytes.Buffer
		other := withConfig(t, goodImage(t), func(cf *v1.ConfigFile) { cf.Config.Env = []string{"X=1"} })
		err := tarball.MultiWrite(map[name.Tag]v1.Image{
			name.MustParseReference("a/a:1").(name.Tag): goodImage(t),
			name.MustParseReference("a/b:1").(name.Tag): other,
		}, &buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}()
	badDiffID := archive(t, withConfig(t, goodImage(t), func(cf *v1.ConfigFile) {
		cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}
	}))

	tests := []struct {
		name        string
		method      string
		path        string
		token       string
		contentType string
		body        func() (string, io.Reader) // content type, body
		header      []string
		status      int
		code        string
	}{
		{name: "no token", path: "/v1/submissions", status: 401, code: "unauthenticated"},
		{name: "garbage token", path: "/v1/submissions", token: "not.a.jwt", status: 401, code: "unauthenticated"},
		{name: "forged token", path: "/v1/submissions", token: forged, status: 401, code: "unauthenticated"},
		{name: "expired token", path: "/v1/submissions", token: expired, status: 401, code: "unauthenticated"},
		{name: "basic auth", path: "/v1/submissions", header: []string{"Authorization", "Basic dXNlcjpwYXNz"}, status: 401, code: "unauthenticated"},
		{name: "two authorization headers", path: "/v1/submissions", token: tok, header: []string{"Authorization", "Bearer " + tok}, status: 400, code: "bad_request"},
		{name: "token without organisation", path: "/v1/submissions", token: noOrg, contentType: "application/json", body: func() (string, io.Reader) { return "application/json", strings.NewReader(sub) }, status: 403, code: "forbidden"},
		{name: "malformed JSON", token: tok, body: func() (string, io.Reader) { return "application/json", strings.NewReader(`{"agent_name": "a",`) }, status: 400, code: "bad_json"},
		{name: "not an object", token: tok, body: func() (string, io.Reader) { return "application/json", strings.NewReader(`["a"]`) }, status: 400, code: "bad_json"},
		{name: "wrong type", token: tok, body: func() (string, io.Reader) { return "application/json", strings.NewReader(`{"agent_name": 7}`) }, status: 400, code: "bad_json"},
		{name: "empty body", token: tok, body: func() (string, io.Reader) { return "application/json", strings.NewReader(``) }, status: 400, code: "bad_json"},
		{name: "two values", token: tok, body: func() (string, io.Reader) { return "application/json", strings.NewReader(sub + sub) }, status: 400, code: "bad_json"},
		{name: "unknown field", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "a", "task_set": "notes", "owner": "someone else"}`)
		}, status: 400, code: "unknown_field"},
		{name: "oversized body", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "` + strings.Repeat("a", 2<<10) + `"}`)
		}, status: 413, code: "body_too_large"},
		{name: "unknown task set", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "a", "task_set": "chess", "image": "sha256:` + strings.Repeat("a", 64) + `"}`)
		}, status: 400, code: "unknown_task_set"},
		{name: "agent name with control characters", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "a\u0007", "task_set": "notes", "image": "sha256:` + strings.Repeat("a", 64) + `"}`)
		}, status: 400, code: "invalid"},
		{name: "image not an ID", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "a", "task_set": "notes", "image": "docker.io/library/alpine:latest"}`)
		}, status: 400, code: "invalid"},
		{name: "image never submitted", token: tok, body: func() (string, io.Reader) {
			return "application/json", strings.NewReader(`{"agent_name": "a", "task_set": "notes", "image": "sha256:` + strings.Repeat("a", 64) + `"}`)
		}, status: 400, code: "unknown_image"},
		{name: "wrong content type", token: tok, body: func() (string, io.Reader) { return "text/plain", strings.NewReader(sub) }, status: 415, code: "unsupported_media_type"},
		{name: "multipart without boundary", token: tok, body: func() (string, io.Reader) { return "multipart/form-data", strings.NewReader(sub) }, status: 400, code: "bad_multipart"},
		{name: "upload without image part", token: tok, body: func() (string, io.Reader) { return upload(sub, nil) }, status: 400, code: "bad_multipart"},
		{name: "upload without submission part", token: tok, body: func() (string, io.Reader) { return upload("", good) }, status: 400, code: "bad_multipart"},
		{name: "upload naming an image", token: tok, body: func() (string, io.Reader) {
			return upload(`{"agent_name": "a", "task_set": "notes", "image": "sha256:`+strings.Repeat("a", 64)+`"}`, good)
		}, status: 400, code: "invalid"},
		{name: "upload with unknown task set", token: tok, body: func() (string, io.Reader) { return upload(`{"agent_name": "a", "task_set": "chess"}`, good) }, status: 400, code: "unknown_task_set"},
		{name: "upload with unknown field", token: tok, body: func() (string, io.Reader) { return upload(`{"agent_name": "a", "task_set": "notes", "x": 1}`, good) }, status: 400, code: "unknown_field"},
		{name: "upload with oversized submission part", token: tok, body: func() (string, io.Reader) {
			return upload(`{"agent_name": "`+strings.Repeat("a", 2<<10)+`"}`, good)
		}, status: 413, code: "body_too_large"},
		{name: "oversized upload", token: tok, body: func() (string, io.Reader) { return upload(sub, bytes.Repeat([]byte("x"), 2<<20)) }, status: 413, code: "body_too_large"},
		{name: "not an archive", token: tok, body: func() (string, io.Reader) { return upload(sub, []byte("MZ this is not a tar file at all")) }, status: 400, code: "bad_image"},
		{name: "tar without manifest", token: tok, body: func() (string, io.Reader) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Typeflag: tar.TypeReg})
			tw.Close()
			return upload(sub, buf.Bytes())
		}, status: 400, code: "bad_image"},
		{name: "path-traversal layer", token: tok, body: func() (string, io.Reader) {
			return upload(sub, archive(t, layerImage(t, &tar.Header{Name: "../../../etc/cron.d/evil", Mode: 0o644, Typeflag: tar.TypeReg})))
		}, status: 400, code: "bad_image"},
		{name: "hard link out of the root", token: tok, body: func() (string, io.Reader) {
			return upload(sub, archive(t, layerImage(t, &tar.Header{Name: "passwd", Linkname: "../../etc/passwd", Typeflag: tar.TypeLink})))
		}, status: 400, code: "bad_image"},
		{name: "two images in one archive", token: tok, body: func() (string, io.Reader) { return upload(sub, twoImages) }, status: 400, code: "bad_image"},
		{name: "layer not matching its diff ID", token: tok, body: func() (string, io.Reader) { return upload(sub, badDiffID) }, status: 400, code: "bad_image"},
		{name: "image for another architecture", token: tok, body: func() (string, io.Reader) {
			return upload(sub, archive(t, withConfig(t, goodImage(t), func(cf *v1.ConfigFile) { cf.Architecture = "s390x" })))
		}, status: 400, code: "bad_image"},
		{name: "image without entrypoint", token: tok, body: func() (string, io.Reader) {
			return upload(sub, archive(t, withConfig(t, goodImage(t), func(cf *v1.ConfigFile) { cf.Config.Entrypoint = nil })))
		}, status: 400, code: "bad_image"},
		{name: "bad id in path", method: "GET", path: "/v1/runs/a%20b", token: tok, status: 400, code: "bad_id"},
		{name: "runs without submission", method: "GET", path: "/v1/runs", token: tok, status: 400, code: "bad_query"},
		{name: "bad limit", method: "GET", path: "/v1/submissions?limit=0", token: tok, status: 400, code: "bad_query"},
		{name: "bad wait", method: "GET", path: "/v1/runs?submission=s&wait=forever", token: tok, status: 400, code: "bad_query"},
		{name: "no such endpoint", method: "GET", path: "/v1/nothing", token: tok, status: 404, code: "no_endpoint"},
		{name: "wrong method", method: "PUT", path: "/v1/submissions", token: tok, status: 405, code: "method_not_allowed"},
		{name: "staff route for a member", method: "GET", path: "/v1/staff/orgs/org_b/submissions", token: tok,
			header: []string{HeaderStaffOperation, "support", HeaderStaffReason, "ticket 1"}, status: 403, code: "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method, path = "POST", "/v1/submissions"
			}
			ct, body := tt.contentType, io.Reader(nil)
			if tt.body != nil {
				ct, body = tt.body()
			}
			r := ta.do(method, path, tt.token, ct, body, tt.header...)
			if r.status != tt.status || r.errorCode() != tt.code {
				t.Errorf("%s %s = %d %s, want %d %s", method, path, r.status, r.body, tt.status, tt.code)
			}
			if got := r.header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", got)
			}
			switch got := r.header.Get("WWW-Authenticate"); {
			case (tt.code == "unauthenticated" || tt.code == "bad_request") && !strings.HasPrefix(got, `Bearer realm="compatool"`):
				t.Errorf("WWW-Authenticate = %q, want httpauth's challenge", got)
			case tt.code == "method_not_allowed" && r.header.Get("Allow") != "GET, HEAD, POST":
				t.Errorf("Allow = %q, want the methods of %s", r.header.Get("Allow"), path)
			}
			for _, secret := range []string{tok, forged, expired} {
				if bytes.Contains(r.body, []byte(secret)) {
					t.Errorf("the answer echoes a token: %s", r.body)
				}
			}
			var b errorBody
			if json.Unmarshal(r.body, &b) == nil && len(b.Error.Message) < 20 {
				t.Errorf("message %q does not say what to do", b.Error.Message)
			}
			ta.storedNothing(org)
		})
	}
}

// TestUploadThenReference submits an uploaded archive, then the same image
// by ID; another organisation cannot use that ID.
func TestUploadThenReference(t *testing.T) {
	ta := newTestApp(t, nil)
	tokA, tokB := ta.token("org_a", false), ta.token("org_b", false)
	ct, body := multipartBody(t, `{"agent_name": "ref", "task_set": "notes", "public": true}`, archive(t, goodImage(t)))
	r := ta.do("POST", "/v1/submissions", tokA, ct, body)
	if r.status != http.StatusCreated {
		t.Fatalf("upload = %d %s", r.status, r.body)
	}
	var sub Submission
	if err := json.Unmarshal(r.body, &sub); err != nil {
		t.Fatal(err)
	}
	wantID, _ := agentimage.ID(goodImage(t))
	if sub.Image != wantID || !sub.Public || len(sub.Tasks) != 5 || r.header.Get("Location") != "/v1/submissions/"+sub.ID {
		t.Errorf("submission = %+v, Location %q; want image %s, public, 5 tasks", sub, r.header.Get("Location"), wantID)
	}
	if left, _ := os.ReadDir(ta.uploads); len(left) > 0 {
		t.Errorf("uploads left behind: %v", left)
	}

	ref := fmt.Sprintf(`{"agent_name": "ref again", "task_set": "notes", "image": %q}`, sub.Image)
	if r := ta.do("POST", "/v1/submissions", tokA, "application/json", strings.NewReader(ref)); r.status != http.StatusCreated {
		t.Errorf("submission by image ID = %d %s", r.status, r.body)
	}
	if r := ta.do("POST", "/v1/submissions", tokB, "application/json", strings.NewReader(ref)); r.status != http.StatusBadRequest || r.errorCode() != "unknown_image" {
		t.Errorf("another organisation's image ID = %d %s, want 400 unknown_image", r.status, r.body)
	}

	r = ta.do("GET", "/v1/runs?submission="+sub.ID+"&wait=20s", tokA, "", nil)
	var runs List[Run]
	if err := json.Unmarshal(r.body, &runs); err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	var states []string
	for _, run := range runs.Items {
		states = append(states, run.State)
		if run.Result == nil || !run.Result.Passed {
			t.Errorf("run %s of %s: %+v", run.ID, run.Task, run.Result)
		}
	}
	if diff := cmp.Diff([]string{"finished", "finished", "finished", "finished", "finished"}, states); diff != "" {
		t.Errorf("states after wait (-want +got):\n%s", diff)
	}
}

func TestPagination(t *testing.T) {
	ta := newTestApp(t, nil)
	tok := ta.token("org_a", false)
	ct, body := multipartBody(t, `{"agent_name": "ref", "task_set": "notes"}`, archive(t, goodImage(t)))
	r := ta.do("POST", "/v1/submissions", tok, ct, body)
	var first Submission
	if err := json.Unmarshal(r.body, &first); err != nil {
		t.Fatal(err)
	}
	ids := []string{first.ID}
	for i := range 4 {
		r := ta.do("POST", "/v1/submissions", tok, "application/json",
			strings.NewReader(fmt.Sprintf(`{"agent_name": "ref %d", "task_set": "notes", "image": %q}`, i, first.Image)))
		var s Submission
		if err := json.Unmarshal(r.body, &s); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	var got []string
	after := ""
	for pages := 0; pages < 10; pages++ {
		r := ta.do("GET", "/v1/submissions?limit=2&after="+after, tok, "", nil)
		var l List[Submission]
		if err := json.Unmarshal(r.body, &l); err != nil {
			t.Fatalf("%v: %s", err, r.body)
		}
		for _, s := range l.Items {
			got = append(got, s.ID)
		}
		if l.Next == "" {
			break
		}
		after = l.Next
	}
	if diff := cmp.Diff(ids, got); diff != "" {
		t.Errorf("paged submissions (-want +got):\n%s", diff)
	}
}

func TestRateLimitPerOrg(t *testing.T) {
	ta := newTestApp(t, func(c *Config) { c.RatePerOrg, c.Burst = 0.001, 2 })
	tokA, tokB := ta.token("org_a", false), ta.token("org_b", false)
	var statuses []int
	for range 3 {
		statuses = append(statuses, ta.do("GET", "/v1/submissions", tokA, "", nil).status)
	}
	if diff := cmp.Diff([]int{200, 200, 429}, statuses); diff != "" {
		t.Errorf("org A's statuses (-want +got):\n%s", diff)
	}
	r := ta.do("GET", "/v1/submissions", tokA, "", nil)
	if r.errorCode() != "rate_limited" || r.header.Get("Retry-After") == "" {
		t.Errorf("limited answer = %d %s, Retry-After %q", r.status, r.body, r.header.Get("Retry-After"))
	}
	if r := ta.do("GET", "/v1/submissions", tokB, "", nil); r.status != 200 {
		t.Errorf("org B is limited by org A's requests: %d %s", r.status, r.body)
	}
}

func TestLimiterForgetsIdleKeys(t *testing.T) {
	l := newLimiter(1, 1)
	now := time.Now()
	for i := range maxLimiterKeys + 10 {
		if ok, _ := l.allow(fmt.Sprint(i), now); !ok {
			t.Fatalf("fresh key %d refused", i)
		}
	}
	if n := len(l.keys); n > maxLimiterKeys {
		t.Errorf("limiter holds %d keys, more than %d", n, maxLimiterKeys)
	}
	if ok, _ := l.allow("0", now); ok && len(l.keys) > maxLimiterKeys {
		t.Errorf("limiter grew past its bound")
	}
}

func TestDevKeyFile(t *testing.T) {
	dir := t.TempDir()
	tok, err := MintToken(dir, "", TokenRequest{Org: "org_a"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, DevKeyFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	a, err := DevAuthority(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Authenticate(context.Background(), tok)
	if err != nil || p.Org != "org_a" || p.Role != "org:admin" {
		t.Errorf("token of the persisted key: %+v, %v", p, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := DevAuthority(dir, ""); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key accepted: %v", err)
	}
}
