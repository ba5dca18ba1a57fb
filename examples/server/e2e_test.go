package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/examples/server/app"
	"github.com/compatool/compatool/internal/d1emu"
	"github.com/compatool/compatool/internal/s3test"
	"github.com/compatool/compatool/internal/scantest"
	"github.com/compatool/compatool/storage"
)

// e2eFlags select the backends of TestEndToEnd: none, so the embedded
// defaults (sqlitestore, filestore, devauth, ocisandbox with runc).
var e2eFlags []string

// TestEndToEnd drives the real server binary on a loopback port as two
// organisations and a staff member would: with the embedded defaults, and
// with the Cloudflare backends (D1, R2, Clerk) selected by flags alone,
// against a D1 emulator, an S3 server and a Clerk-compatible JWKS. After
// the session it reads every byte the backends stored (see checkStores).
func TestEndToEnd(t *testing.T) {
	t.Run("embedded defaults", func(t *testing.T) {
		data, tap := t.TempDir(), newTokenTap(t)
		scenario(t, backends{
			start: func() *server {
				return tap.front(startServer(t, data, nil, append([]string{"-gateway-url=" + tap.url}, e2eFlags...)...))
			},
			token:  func(s *server, org string, staff bool) string { return s.token(org, staff) },
			stores: []store{{dir: data, holdsRuns: true, scrubbed: true}},
			tap:    tap,
		})
	})
	t.Run("Cloudflare backends", func(t *testing.T) {
		cf := cloudflare(t)
		data, tap := t.TempDir(), newTokenTap(t)
		flags := append(append([]string{"-gateway-url=" + tap.url}, e2eFlags...), cf.flags...)
		scenario(t, backends{
			start: func() *server { return tap.front(startServer(t, data, cf.env, flags...)) },
			token: func(_ *server, org string, staff bool) string { return cf.issue(org, staff) },
			stores: []store{
				{dir: data, scrubbed: true},
				// The emulator stands in for D1, whose storage is D1's to
				// scrub (see d1store): erasure is not checked in it.
				{dir: cf.d1Dir, holdsRuns: true},
				{dir: cf.s3Dir, holdsRuns: true, scrubbed: true},
			},
			signingKey:  cf.key,
			credentials: cf.credentials,
			tap:         tap,
		})
	})
}

// backends says how a scenario starts its server and where the server
// keeps what it stores.
type backends struct {
	// start starts a server (again, on the same stores, at the end).
	start func() *server
	// token mints the tokens the server accepts.
	token  func(s *server, org string, staff bool) string
	stores []store
	// signingKey signs the tokens; nil for the data directory's devauth
	// key, which the server makes.
	signingKey ed25519.PrivateKey
	// credentials are the backends' own secrets (API token, secret key).
	credentials []string
	tap         *tokenTap
}

// store is a directory where the session's data lands.
type store struct {
	dir string
	// holdsRuns says the store keeps every run: its bytes must hold the id
	// of each run not erased, else a scan of it read the wrong place.
	holdsRuns bool
	// scrubbed says erasure leaves no trace in it.
	scrubbed bool
}

// tokenTap stands between the sandboxes and the server's MCP gateway: the
// server is started with -gateway-url pointing at it, so each agent's MCP
// requests pass it. It records each run's bearer token, which neither the
// agent nor the server reports (P13), and forwards the request.
type tokenTap struct {
	url    string
	target atomic.Pointer[url.URL]
	mu     sync.Mutex
	tokens map[string]string // run id → token
}

func newTokenTap(t *testing.T) *tokenTap {
	tap := &tokenTap{tokens: map[string]string{}}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(tap.target.Load()) }, FlushInterval: -1}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		run, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/runs/"), "/")
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			tap.mu.Lock()
			tap.tokens[run] = tok
			tap.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tap.url = srv.URL
	return tap
}

// front points the tap at s and returns s.
func (tap *tokenTap) front(s *server) *server {
	u, err := url.Parse(s.url)
	if err != nil {
		s.t.Fatal(err)
	}
	tap.target.Store(u)
	return s
}

func (tap *tokenTap) token(run string) string {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return tap.tokens[run]
}

// cloudflareBackends are a D1 emulator, an S3 server and a JWKS endpoint,
// and what points the server at them.
type cloudflareBackends struct {
	env, flags []string
	// issue issues tokens the JWKS verifies, signed with key.
	issue func(org string, staff bool) string
	key   ed25519.PrivateKey
	// d1Dir and s3Dir hold the emulator's database and the S3 server's
	// objects.
	d1Dir, s3Dir string
	credentials  []string
}

func cloudflare(t *testing.T) cloudflareBackends {
	const account, database, d1Token = "acc-1", "db-1", "d1-test-token"
	cf := cloudflareBackends{d1Dir: t.TempDir(), key: mustKey(t)}
	emu, err := d1emu.New(filepath.Join(cf.d1Dir, "d1.sqlite"), d1emu.Options{AccountID: account, DatabaseID: database, Token: d1Token})
	if err != nil {
		t.Fatal(err)
	}
	d1srv := httptest.NewServer(emu)
	t.Cleanup(func() { d1srv.Close(); emu.Close() })

	s3 := s3test.Start(t)
	cf.s3Dir = s3.Dir
	const bucket = "transcripts"
	client := s3api.New(s3api.Options{
		Region: s3.Region, BaseEndpoint: aws.String(s3.Endpoint), UsePathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: s3.AccessKey, SecretAccessKey: s3.SecretKey}, nil
		}),
	})
	if _, err := client.CreateBucket(context.Background(), &s3api.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}

	var authority *devauth.Authority
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/jwks.json" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(authority.PublicJWKS())
	}))
	t.Cleanup(jwks.Close)
	const party = "https://app.example.com"
	authority, err = devauth.New(cf.key, &devauth.Options{Issuer: jwks.URL, AuthorizedParties: []string{party}, StaffClaim: "compatool_staff"})
	if err != nil {
		t.Fatal(err)
	}

	cf.credentials = []string{d1Token, s3.SecretKey}
	cf.env = []string{"COMPATOOL_D1_API_TOKEN=" + d1Token, "COMPATOOL_R2_SECRET_ACCESS_KEY=" + s3.SecretKey}
	cf.flags = []string{
		"-metadata=d1", "-d1-account=" + account, "-d1-database=" + database, "-d1-base-url=" + d1srv.URL + "/client/v4/",
		"-transcripts=r2", "-r2-bucket=" + bucket, "-r2-endpoint=" + s3.Endpoint, "-r2-access-key-id=" + s3.AccessKey,
		"-r2-region=" + s3.Region, "-r2-path-style",
		"-auth=clerk", "-clerk-issuer=" + jwks.URL, "-clerk-authorized-parties=" + party,
	}
	cf.issue = func(org string, staff bool) string {
		tok, err := authority.Issue(devauth.Claims{Subject: "user_of_" + cmpOr(org, "staff"), Org: auth.OrgID(org), Staff: staff, Lifetime: devauth.DefaultMaxLifetime})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	return cf
}

func mustKey(t *testing.T) ed25519.PrivateKey {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// scenario is the end-to-end story on the server b starts.
func scenario(t *testing.T, b backends) {
	s := b.start()
	tokA, tokB, tokStaff := b.token(s, "org_a", false), b.token(s, "org_b", false), b.token(s, "", true)

	if r := s.get("/readyz", ""); r.status != http.StatusOK {
		t.Fatalf("readyz = %s", r)
	}

	// Bad input gets a JSON error that says what to do, and stores nothing.
	notes := `{"agent_name": "a", "task_set": "notes"}`
	for _, tc := range []struct {
		name string
		r    response
		code string
	}{
		{"no token", s.do("POST", "/v1/submissions", "", "application/json", strings.NewReader(notes)), "unauthenticated"},
		{"malformed JSON", s.do("POST", "/v1/submissions", tokA, "application/json", strings.NewReader(`{"agent_name":`)), "bad_json"},
		{"unknown field", s.do("POST", "/v1/submissions", tokA, "application/json", strings.NewReader(`{"agent_name": "a", "org": "org_b"}`)), "unknown_field"},
		{"unknown task set", s.uploadBytes(tokA, `{"agent_name": "a", "task_set": "chess"}`, []byte("x")), "unknown_task_set"},
		{"not an archive", s.uploadBytes(tokA, notes, []byte("this is not a tar archive")), "bad_image"},
		{"path-traversal layer", s.uploadBytes(tokA, notes, traversalArchive(t)), "bad_image"},
	} {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(tc.r.body, &e); err != nil || e.Error.Code != tc.code || e.Error.Message == "" {
			t.Errorf("%s: %s; want a JSON error %q", tc.name, tc.r, tc.code)
		}
	}
	if got := decode[app.List[app.Submission]](t, s.get("/v1/submissions", tokA), http.StatusOK); len(got.Items) != 0 {
		t.Errorf("bad input stored %d submissions", len(got.Items))
	}
	for _, dir := range []string{"uploads", "images/images"} {
		if left, _ := os.ReadDir(filepath.Join(s.data, dir)); len(left) > 0 {
			t.Errorf("bad input left %v in %s", left, dir)
		}
	}

	// Org A uploads the reference agent and its runs pass.
	sub := s.upload(tokA, "agent to erase", false)
	if sub.Image != agentImageID || sub.Public {
		t.Errorf("submission %+v: want image %s, private", sub, agentImageID)
	}
	runs := s.wait(tokA, sub.ID)
	tasks, err := app.NotesTasks()
	if err != nil {
		t.Fatal(err)
	}
	goals := map[string]string{}
	for _, task := range tasks {
		goals[string(task.ID)] = task.Content.Goal
	}
	if len(runs) != len(tasks) {
		t.Fatalf("%d runs, want %d", len(runs), len(tasks))
	}
	transcripts := map[string][]byte{}
	for _, run := range runs {
		if run.State != "finished" || run.Result == nil || !run.Result.Passed || run.Result.Score != 1 {
			t.Errorf("run %s (%s): state %s, result %+v; want finished and passed", run.ID, run.Task, run.State, run.Result)
		}
		got := decode[app.Run](t, s.get("/v1/runs/"+run.ID, tokA), http.StatusOK)
		if diff := cmp.Diff(run, got); diff != "" {
			t.Errorf("GET /v1/runs/%s differs from the listing (-list +get):\n%s", run.ID, diff)
		}
		r := s.get("/v1/runs/"+run.ID+"/transcript", tokA)
		if r.status != http.StatusOK {
			t.Fatalf("transcript of %s: %s", run.ID, r)
		}
		transcripts[run.ID] = r.body
		checkTranscript(t, r.body, run, goals[run.Task])
	}

	// Org B sees none of org A's resources: every one answers exactly as
	// an id that does not exist.
	runA := runs[0].ID
	if got := decode[app.List[app.Submission]](t, s.get("/v1/submissions", tokB), http.StatusOK); len(got.Items) != 0 {
		t.Errorf("org B lists %d submissions", len(got.Items))
	}
	missing := s.get("/v1/submissions/sub_missing", tokB)
	for _, req := range []struct{ method, path string }{
		{"GET", "/v1/submissions/" + sub.ID},
		{"GET", "/v1/runs?submission=" + sub.ID},
		{"GET", "/v1/runs?submission=" + sub.ID + "&wait=1s"},
		{"GET", "/v1/runs/" + runA},
		{"GET", "/v1/runs/" + runA + "/transcript"},
		{"POST", "/v1/submissions/" + sub.ID + "/publish"},
		{"POST", "/v1/submissions/" + sub.ID + "/unpublish"},
		{"POST", "/v1/submissions/" + sub.ID + "/cancel"},
		{"DELETE", "/v1/submissions/" + sub.ID},
	} {
		r := s.do(req.method, req.path, tokB, "", nil)
		if r.status != http.StatusNotFound || !bytes.Equal(r.body, missing.body) {
			t.Errorf("org B: %s %s = %s; want the answer for a missing id, %s", req.method, req.path, r, missing)
		}
	}
	if r := s.submitByID(tokB, "stolen", sub.Image); r.code() != "unknown_image" {
		t.Errorf("org B submitting org A's image = %s, want unknown_image", r)
	}

	// Staff reads need an operation and a reason, and each leaves an
	// audit record that org A can see.
	if r := s.get("/v1/staff/orgs/org_a/runs/"+runA, tokStaff); r.status != http.StatusForbidden {
		t.Errorf("staff read without a reason = %s, want 403", r)
	}
	if r := s.get("/v1/staff/orgs/org_a/runs/"+runA, tokStaff, app.HeaderStaffOperation, "curiosity", app.HeaderStaffReason, "just looking"); r.status != http.StatusForbidden {
		t.Errorf("staff read for an unknown operation = %s, want 403", r)
	}
	if r := s.get("/v1/staff/orgs/org_a/runs/"+runA, tokA, app.HeaderStaffOperation, "support", app.HeaderStaffReason, "ticket 1"); r.status != http.StatusForbidden {
		t.Errorf("staff read by a member = %s, want 403", r)
	}
	if r := s.get("/v1/submissions", tokStaff); r.status != http.StatusForbidden {
		t.Errorf("staff token without an organisation on a member route = %s, want 403", r)
	}
	staffRun := decode[app.Run](t, s.get("/v1/staff/orgs/org_a/runs/"+runA, tokStaff, app.HeaderStaffOperation, "support", app.HeaderStaffReason, "ticket 4711: run looks stuck"), http.StatusOK)
	if staffRun.ID != runA {
		t.Errorf("staff read run %s, want %s", staffRun.ID, runA)
	}
	r := s.get("/v1/staff/orgs/org_a/runs/"+runA+"/transcript?operation=infrastructure&reason=disk+migration", tokStaff)
	if r.status != http.StatusOK || !bytes.Equal(r.body, transcripts[runA]) {
		t.Errorf("staff transcript read = %s", r)
	}
	audit := decode[app.List[app.AuditRecord]](t, s.get("/v1/audit", tokA), http.StatusOK)
	want := []app.AuditRecord{
		{Staff: "user_of_staff", Org: "org_a", Operation: "support", Reason: "ticket 4711: run looks stuck", Action: "result", Target: runA},
		{Staff: "user_of_staff", Org: "org_a", Operation: "infrastructure", Reason: "disk migration", Action: "transcript", Target: runA},
	}
	if diff := cmp.Diff(want, audit.Items, cmpopts.IgnoreFields(app.AuditRecord{}, "ID", "At")); diff != "" {
		t.Errorf("org A's audit log (-want +got):\n%s", diff)
	}
	if got := decode[app.List[app.AuditRecord]](t, s.get("/v1/audit", tokB), http.StatusOK); len(got.Items) != 0 {
		t.Errorf("org B's audit log holds org A's records: %+v", got.Items)
	}

	// Publication is opt-in and can be withdrawn.
	public := "/v1/public/runs/" + runA + "/transcript"
	if r := s.get(public, ""); r.status != http.StatusNotFound {
		t.Errorf("public transcript before publication = %s, want 404", r)
	}
	if got := decode[app.Submission](t, s.do("POST", "/v1/submissions/"+sub.ID+"/publish", tokA, "", nil), http.StatusOK); !got.Public {
		t.Errorf("published submission: %+v", got)
	}
	if r := s.get(public, ""); r.status != http.StatusOK || !bytes.Equal(r.body, transcripts[runA]) {
		t.Errorf("public transcript after publication = %s", r)
	}
	decode[app.Submission](t, s.do("POST", "/v1/submissions/"+sub.ID+"/unpublish", tokA, "", nil), http.StatusOK)
	if r := s.get(public, ""); r.status != http.StatusNotFound {
		t.Errorf("public transcript after unpublication = %s, want 404", r)
	}
	s.do("POST", "/v1/submissions/"+sub.ID+"/publish", tokA, "", nil)

	// Org B runs an agent of its own, which erasure of org A's must leave.
	subB := s.upload(tokB, "agent of org B", false)
	runsB := s.wait(tokB, subB.ID)

	// Erasure removes the submission, its runs, results and transcripts,
	// published or not; the audit log stays.
	if r := s.do("DELETE", "/v1/submissions/"+sub.ID, tokA, "", nil); r.status != http.StatusNoContent {
		t.Fatalf("erase = %s", r)
	}
	// Nothing of it is left in any store, not even in the bytes SQLite
	// freed (P4); runA alone stays, as the target of the audit records.
	erased := []string{sub.ID, sub.AgentName}
	for _, run := range runs[1:] {
		erased = append(erased, run.ID)
	}
	checkErased(t, b, erased, ids(runsB))
	for _, path := range []string{"/v1/submissions/" + sub.ID, "/v1/runs?submission=" + sub.ID, "/v1/runs/" + runA, "/v1/runs/" + runA + "/transcript", public} {
		tok := tokA
		if path == public {
			tok = ""
		}
		if r := s.get(path, tok); r.status != http.StatusNotFound {
			t.Errorf("GET %s after erasure = %s, want 404", path, r)
		}
	}
	// No transcript file of an erased run is left on disk (filestore).
	filepath.WalkDir(filepath.Join(s.data, "transcripts"), func(p string, d fs.DirEntry, err error) error {
		for _, run := range runs {
			if err == nil && strings.Contains(d.Name(), run.ID) {
				t.Errorf("%s is left after erasure", p)
			}
		}
		return nil
	})
	if r := s.do("DELETE", "/v1/submissions/"+sub.ID, tokA, "", nil); r.status != http.StatusNotFound {
		t.Errorf("second erase = %s, want 404", r)
	}
	if r := s.submitByID(tokA, "again", sub.Image); r.code() != "unknown_image" {
		t.Errorf("submitting an erased submission's image by ID = %s, want unknown_image", r)
	}
	if got := decode[app.List[app.AuditRecord]](t, s.get("/v1/audit", tokA), http.StatusOK); len(got.Items) != 2 {
		t.Errorf("audit log after erasure has %d records, want 2", len(got.Items))
	}

	// An image that one submission alone uses leaves the data directory
	// with it; the reference agent's image, which org B still uses and
	// whose layers it shares, stays.
	withoutUnique := imageFiles(t, s.data)
	subU := decode[app.Submission](t, s.uploadBytes(tokA, `{"agent_name": "unique image", "task_set": "notes"}`, uniqueArchive(t)), http.StatusCreated)
	s.wait(tokA, subU.ID)
	if added := imageFiles(t, s.data); len(added) < len(withoutUnique)+3 {
		t.Errorf("image files after uploading an image with a layer of its own: %v; want its config, root filesystem and record added to %v", added, withoutUnique)
	}
	if r := s.do("DELETE", "/v1/submissions/"+subU.ID, tokA, "", nil); r.status != http.StatusNoContent {
		t.Fatalf("erase = %s", r)
	}
	if diff := cmp.Diff(withoutUnique, imageFiles(t, s.data)); diff != "" {
		t.Errorf("image files after erasing the only submission of an image (-before its upload +after):\n%s", diff)
	}

	// A second submission survives a restart with the embedded stores.
	sub2 := s.upload(tokA, "notesagent again", false)
	s.wait(tokA, sub2.ID)
	if code := s.stop(); code != 0 {
		t.Errorf("server exit status after SIGTERM = %d, want 0", code)
	}
	if !strings.Contains(s.log(), `"msg":"shut down"`) {
		t.Errorf("the server log does not show a graceful shutdown")
	}
	s2 := b.start()
	got := decode[app.Submission](t, s2.get("/v1/submissions/"+sub2.ID, tokA), http.StatusOK)
	if diff := cmp.Diff(sub2, got); diff != "" {
		t.Errorf("submission after a restart (-before +after):\n%s", diff)
	}
	runs2 := s2.wait(tokA, sub2.ID)
	for _, run := range runs2 {
		if run.Result == nil || !run.Result.Passed {
			t.Errorf("run %s after a restart: %+v", run.ID, run.Result)
		}
	}
	if r := s2.get("/v1/submissions/"+sub.ID, tokA); r.status != http.StatusNotFound {
		t.Errorf("erased submission after a restart = %s, want 404", r)
	}
	// The image uploaded before the restart is still there to run.
	sub3 := decode[app.Submission](t, s2.submitByID(tokA, "by ID after a restart", sub2.Image), http.StatusCreated)
	runs3 := s2.wait(tokA, sub3.ID)
	for _, run := range runs3 {
		if run.Result == nil || !run.Result.Passed {
			t.Errorf("run %s of an image imported before the restart: %+v", run.ID, run.Result)
		}
	}
	if code := s2.stop(); code != 0 {
		t.Errorf("server exit status after SIGTERM = %d, want 0", code)
	}

	// With every server stopped, every store is read once more.
	kept := slices.Concat(runsB, runs2, runs3)
	checkErased(t, b, erased, ids(kept))
	checkStores(t, b, []string{tokA, tokB, tokStaff}, slices.Concat(runs, kept), ids(kept))
}

func ids(runs []app.Run) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.ID
	}
	return out
}

// checkErased fails the test if a store that erasure scrubs holds, in a
// file's name or bytes, a string of an erased submission, or if a store
// that keeps every run lacks one of kept.
func checkErased(t *testing.T, b backends, erased, kept []string) {
	t.Helper()
	for _, st := range b.stores {
		if !st.scrubbed {
			continue
		}
		var mustFind []string
		if st.holdsRuns {
			mustFind = kept
		}
		scantest.ScanDir(t, st.dir, forms(erased...), mustFind...)
		filepath.WalkDir(st.dir, func(p string, _ fs.DirEntry, err error) error {
			for _, e := range erased {
				if err == nil && strings.Contains(strings.TrimPrefix(p, st.dir), e) {
					t.Errorf("%s is left after erasure", p)
				}
			}
			return err
		})
	}
}

// checkStores reads every byte of every store, and fails the test if one
// holds a secret of the session (P7, P8, P13): a bearer token of the API, a
// run's MCP token, a goal or a task's configuration, a credential of the
// backends, or the private key that signs the API's tokens outside its own
// key file. So that finding nothing proves something, every store that
// keeps every run must hold the ids of those in kept.
func checkStores(t *testing.T, b backends, bearer []string, runs []app.Run, kept []string) {
	t.Helper()
	secrets := forms(slices.Concat(bearer, b.credentials)...)
	for _, run := range runs {
		tok := b.tap.token(run.ID)
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) < 32 {
			t.Fatalf("the tap saw MCP token %q for run %s; want one of the gateway's (32 bytes, base64url)", tok, run.ID)
		}
		secrets = append(secrets, []byte(tok), raw)
	}
	tasks, err := app.NotesTasks()
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		secrets = append(secrets, forms(task.Content.Goal, string(task.Content.Config))...)
	}
	for _, st := range b.stores {
		var mustFind []string
		if st.holdsRuns {
			mustFind = kept
		}
		n := scantest.ScanDir(t, st.dir, secrets, mustFind...)
		t.Logf("%s: read %d bytes", st.dir, n)
	}

	// The signing key may be in its own file and nowhere else.
	key, keyFile := b.signingKey, ""
	if key == nil {
		keyFile = filepath.Join(b.stores[0].dir, app.DevKeyFile)
		b64, err := os.ReadFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
		if err != nil || len(seed) != ed25519.SeedSize {
			t.Fatalf("%s holds no base64 Ed25519 seed (%v)", keyFile, err)
		}
		key = ed25519.NewKeyFromSeed(seed)
	}
	var keyForms [][]byte
	for _, k := range [][]byte{key.Seed(), key} {
		keyForms = append(keyForms, k, []byte(hex.EncodeToString(k)))
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			keyForms = append(keyForms, []byte(enc.EncodeToString(k)))
		}
	}
	found := 0
	for _, st := range b.stores {
		err := filepath.WalkDir(st.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, f := range keyForms {
				switch {
				case !bytes.Contains(data, f):
				case p == keyFile:
					found++
				default:
					t.Errorf("%s holds the private key that signs the API's tokens", p)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if keyFile != "" && found == 0 {
		t.Errorf("%s does not hold the signing key in any form looked for; the key scan looks for the wrong bytes", keyFile)
	}
}

// forms returns each string as it may be stored: raw, and inside a JSON
// string with and without HTML escaping.
func forms(strs ...string) [][]byte {
	var out [][]byte
	for _, s := range strs {
		out = append(out, []byte(s))
		for _, html := range []bool{true, false} {
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(html)
			enc.Encode(s)
			q := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
			if q = q[1 : len(q)-1]; !slices.ContainsFunc(out, func(o []byte) bool { return bytes.Equal(o, q) }) {
				out = append(out, q)
			}
		}
	}
	return out
}

// traversalArchive is a `docker save` archive whose layer writes
// ../../etc/cron.d/evil.
func traversalArchive(t *testing.T) []byte {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "../../etc/cron.d/evil", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	b := layer.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config.Entrypoint = "linux", runtime.GOARCH, []string{"/agent"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tarball.Write(name.MustParseReference("evil/evil:1"), img, &out); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// imageFiles lists what the data directory holds of images: the
// sandbox's image configs and root filesystems, and the server's image
// records.
func imageFiles(t *testing.T, data string) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"images/images", "images/rootfs", "image-refs"} {
		entries, err := os.ReadDir(filepath.Join(data, dir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, dir+"/"+e.Name())
		}
	}
	return out
}

// uniqueArchive is the reference agent's image with one more layer: an
// image of its own, with a root filesystem of its own.
func uniqueArchive(t *testing.T) []byte {
	img, err := tarball.ImageFromPath(agentArchive, nil)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	data := []byte("a file only this image has")
	tw.WriteHeader(&tar.Header{Name: "unique", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
	tw.Write(data)
	tw.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, l); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tarball.Write(name.MustParseReference("compatool/unique:1"), img, &out); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// checkTranscript checks a stored transcript: the goal is [REDACTED] and
// appears nowhere, and every tool call the agent made is kept with its
// arguments in full.
func checkTranscript(t *testing.T, raw []byte, run app.Run, goal string) {
	t.Helper()
	var tr storage.Transcript
	if err := json.Unmarshal(raw, &tr); err != nil {
		t.Fatalf("transcript of %s: %v", run.ID, err)
	}
	if tr.Goal != storage.Redacted {
		t.Errorf("transcript of %s: goal %q, want %s", run.ID, tr.Goal, storage.Redacted)
	}
	if bytes.Contains(raw, []byte(goal)) || bytes.Contains(raw, []byte("You are working in a notes app")) {
		t.Errorf("transcript of %s holds the goal", run.ID)
	}
	if string(tr.Run) != run.ID || string(tr.Task) != run.Task || tr.Org != "org_a" {
		t.Errorf("transcript keys: run %s task %s org %s; want %s %s org_a", tr.Run, tr.Task, tr.Org, run.ID, run.Task)
	}
	plan, err := scripted.Plan(goal)
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		Name string
		Args map[string]any
	}
	want := []call{{"list_notes", map[string]any{}}}
	for _, a := range plan {
		want = append(want, call{a.Tool, a.Args})
	}
	var got []call
	var stdout string
	for _, e := range tr.Events {
		switch {
		case e.ToolCall != nil:
			var args map[string]any
			if err := json.Unmarshal(e.ToolCall.Arguments, &args); err != nil {
				t.Errorf("tool call %s: arguments %s: %v", e.ToolCall.Name, e.ToolCall.Arguments, err)
			}
			if e.ToolCall.IsError || e.ToolCall.Error != "" || len(e.ToolCall.Result) == 0 {
				t.Errorf("tool call %s: error %q, result %s", e.ToolCall.Name, e.ToolCall.Error, e.ToolCall.Result)
			}
			got = append(got, call{e.ToolCall.Name, args})
		case e.Log != nil && e.Log.Stream == "stdout":
			stdout += e.Log.Data
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("tool calls of %s (%s) (-want +got):\n%s", run.ID, run.Task, diff)
	}
	// The agent echoes its goal on stdout; the transcript shows it redacted.
	if !strings.Contains(stdout, "done: "+storage.Redacted) {
		t.Errorf("agent stdout in the transcript = %q, want the echoed goal as %s", stdout, storage.Redacted)
	}
}
