package httpauth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/auth/httpauth"
	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newAuthority(t *testing.T, now time.Time) *devauth.Authority {
	t.Helper()
	a, err := devauth.Generate(&devauth.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func issue(t *testing.T, a *devauth.Authority) string {
	t.Helper()
	tok, err := a.Issue(devauth.Claims{Subject: "user_1", Org: "org_a", Role: "org:admin"})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// seen records what the protected handler received.
type seen struct {
	principal *auth.Principal
	header    http.Header
}

func TestHandler(t *testing.T) {
	a := newAuthority(t, epoch)
	good := issue(t, a)
	expired := issue(t, newAuthority(t, epoch.Add(-time.Hour)))
	forged := issue(t, newAuthority(t, epoch))
	const realm = `Bearer realm="compatool"`

	for _, c := range []struct {
		name      string
		header    http.Header
		target    string
		code      int
		challenge string
	}{
		{"bearer", http.Header{"Authorization": {"Bearer " + good}}, "/", 200, ""},
		{"lower-case scheme", http.Header{"Authorization": {"bearer " + good}}, "/", 200, ""},
		{"no credentials", nil, "/", 401, realm},
		{"basic", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, "/", 401, realm},
		{"token without scheme", http.Header{"Authorization": {good}}, "/", 401, realm},
		{"scheme without token", http.Header{"Authorization": {"Bearer"}}, "/", 401, realm},
		{"empty token", http.Header{"Authorization": {"Bearer "}}, "/", 401, realm + `, error="invalid_token"`},
		{"session cookie", http.Header{"Cookie": {"__session=" + good}}, "/", 401, realm},
		{"query token", nil, "/?access_token=" + good + "&token=" + good + "&__session=" + good, 401, realm},
		{"two headers", http.Header{"Authorization": {"Bearer " + good, "Bearer " + good}}, "/", 400, realm + `, error="invalid_request"`},
		{"expired", http.Header{"Authorization": {"Bearer " + expired}}, "/", 401, realm + `, error="invalid_token"`},
		{"forged", http.Header{"Authorization": {"Bearer " + forged}}, "/", 401, realm + `, error="invalid_token"`},
		{"truncated", http.Header{"Authorization": {"Bearer " + good[:len(good)-5]}}, "/", 401, realm + `, error="invalid_token"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			m, err := httpauth.New(a, &httpauth.Options{Realm: "compatool", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			var got *seen
			h := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = &seen{httpauth.Principal(r.Context()), r.Header}
			}))
			req := httptest.NewRequest(http.MethodGet, c.target, nil)
			for k, v := range c.header {
				req.Header[k] = v
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if rec.Code != c.code || rec.Header().Get("WWW-Authenticate") != c.challenge {
				t.Errorf("status %d, WWW-Authenticate %q; want %d, %q", rec.Code, rec.Header().Get("WWW-Authenticate"), c.code, c.challenge)
			}
			for _, tok := range []string{good, expired, forged} {
				if strings.Contains(rec.Body.String(), tok) || strings.Contains(logs.String(), tok) {
					t.Errorf("a token is echoed: body %q, log %q", rec.Body.String(), logs.String())
				}
			}
			if c.code != 200 {
				if got != nil {
					t.Errorf("a refused request reached the handler with %+v", got.principal)
				}
				if !strings.Contains(logs.String(), "request refused") {
					t.Errorf("the refusal was not logged: %q", logs.String())
				}
				return
			}
			if got == nil {
				t.Fatal("the handler was not called")
			}
			want := &auth.Principal{Subject: "user_1", Org: "org_a", Role: "org:admin", IssuedAt: epoch, ExpiresAt: epoch.Add(devauth.DefaultLifetime)}
			if diff := cmp.Diff(want, got.principal); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
			if v := got.header.Get("Authorization"); v != "" {
				t.Errorf("the handler sees the Authorization header %q", v)
			}
			if v := req.Header.Get("Authorization"); v == "" {
				t.Error("the caller's request was modified")
			}
		})
	}
}

// echoing is an authenticator that quotes the token in its errors.
type echoing struct{}

func (echoing) Authenticate(_ context.Context, token string) (*auth.Principal, error) {
	return nil, fmt.Errorf("%w: bad token %q", auth.ErrUnauthenticated, token)
}

// silent returns neither principal nor error.
type silent struct{}

func (silent) Authenticate(context.Context, string) (*auth.Principal, error) { return nil, nil }

func TestHandlerDefensive(t *testing.T) {
	const token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2ln"
	for name, a := range map[string]auth.Authenticator{"echoing": echoing{}, "silent": silent{}} {
		t.Run(name, func(t *testing.T) {
			var logs bytes.Buffer
			m, err := httpauth.New(a, &httpauth.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			h := m.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("handler called") }))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != 401 || rec.Header().Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
				t.Errorf("status %d, challenge %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
			}
			if strings.Contains(logs.String(), token) || strings.Contains(rec.Body.String(), token) {
				t.Errorf("the token leaked: log %q body %q", logs.String(), rec.Body.String())
			}
		})
	}
}

var errNotFound = errors.New("storage: not found")

func TestStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 200},
		{fmt.Errorf("x: %w", auth.ErrUnauthenticated), 401},
		{fmt.Errorf("x: %w", auth.ErrForbidden), 403},
		{fmt.Errorf("submission sub_1: %w", errNotFound), 404},
		{errors.New("disk on fire"), 500},
		{context.Canceled, 500},
	} {
		if got := httpauth.Status(c.err, nil, errNotFound); got != c.want {
			t.Errorf("Status(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	if got := httpauth.Status(errNotFound); got != 500 {
		t.Errorf("Status(not found, no sentinels) = %d, want 500", got)
	}
}

func TestError(t *testing.T) {
	m, err := httpauth.New(echoing{}, &httpauth.Options{Realm: "r"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		err       error
		code      int
		challenge string
	}{
		{fmt.Errorf("%w: token expired", auth.ErrUnauthenticated), 401, `Bearer realm="r", error="invalid_token"`},
		{fmt.Errorf("%w: user_1 is not staff", auth.ErrForbidden), 403, ""},
		{fmt.Errorf("submission sub_secret of org_b: %w", errNotFound), 404, ""},
		{errors.New("sqlite: table runs is locked"), 500, ""},
	} {
		rec := httptest.NewRecorder()
		m.Error(rec, httptest.NewRequest("GET", "/", nil), c.err, errNotFound)
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != c.code || rec.Header().Get("WWW-Authenticate") != c.challenge || string(body) != http.StatusText(c.code)+"\n" {
			t.Errorf("Error(%v): %d %q %q; want %d %q and the status text", c.err, rec.Code, rec.Header().Get("WWW-Authenticate"), body, c.code, c.challenge)
		}
	}
}

func TestNew(t *testing.T) {
	if _, err := httpauth.New(nil, nil); err == nil {
		t.Error("New(nil) succeeded")
	}
	for _, realm := range []string{`a"b`, `a\b`, "a\nb"} {
		if _, err := httpauth.New(echoing{}, &httpauth.Options{Realm: realm}); err == nil {
			t.Errorf("New with realm %q succeeded", realm)
		}
	}
	if p := httpauth.Principal(context.Background()); p != nil {
		t.Errorf("Principal(empty ctx) = %+v", p)
	}
	p := &auth.Principal{Subject: "u"}
	if got := httpauth.Principal(httpauth.NewContext(context.Background(), p)); got != p {
		t.Errorf("Principal(NewContext(p)) = %+v", got)
	}
}

// refusing refuses every token with an error of the given sentinel that
// quotes the token.
type refusing struct{ sentinel error }

func (a refusing) Authenticate(_ context.Context, token string) (*auth.Principal, error) {
	return nil, fmt.Errorf("%w: cannot accept %q", a.sentinel, token)
}

// hookCall is what Options.OnError was called with.
type hookCall struct {
	status     int
	authHeader string
	err        error
}

// reachable returns err and every error it wraps.
func reachable(err error) []error {
	if err == nil {
		return nil
	}
	out := []error{err}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		out = append(out, reachable(u.Unwrap())...)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			out = append(out, reachable(e)...)
		}
	}
	return out
}

func TestOnError(t *testing.T) {
	a := newAuthority(t, epoch)
	good := issue(t, a)
	forged := issue(t, newAuthority(t, epoch))
	const realm = `Bearer realm="r"`
	for _, c := range []struct {
		name      string
		auth      auth.Authenticator
		header    []string
		status    int
		challenge string
		is        []error
	}{
		{"no credentials", a, nil, 401, realm, []error{auth.ErrUnauthenticated}},
		{"two headers", a, []string{"Bearer " + good, "Bearer " + good}, 400, realm + `, error="invalid_request"`, []error{auth.ErrUnauthenticated}},
		{"forged", a, []string{"Bearer " + forged}, 401, realm + `, error="invalid_token"`, []error{auth.ErrUnauthenticated}},
		{"quoting authenticator", refusing{auth.ErrUnauthenticated}, []string{"Bearer " + forged}, 401, realm + `, error="invalid_token"`, []error{auth.ErrUnauthenticated}},
		{"forbidding authenticator", refusing{auth.ErrForbidden}, []string{"Bearer " + forged}, 403, "", []error{auth.ErrForbidden}},
		{"failing authenticator", refusing{context.DeadlineExceeded}, []string{"Bearer " + forged}, 500, "", []error{context.DeadlineExceeded}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var calls []hookCall
			m, err := httpauth.New(c.auth, &httpauth.Options{Realm: "r", OnError: func(w http.ResponseWriter, r *http.Request, status int, err error) {
				calls = append(calls, hookCall{status, r.Header.Get("Authorization"), err})
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				fmt.Fprintf(w, `{"error": %q}`, http.StatusText(status))
			}})
			if err != nil {
				t.Fatal(err)
			}
			h := m.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("a refused request reached the handler") }))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header["Authorization"] = c.header
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if len(calls) != 1 {
				t.Fatalf("OnError called %d times, want once", len(calls))
			}
			call := calls[0]
			want := fmt.Sprintf(`{"error": %q}`, http.StatusText(c.status))
			if rec.Code != c.status || call.status != c.status || rec.Header().Get("WWW-Authenticate") != c.challenge ||
				rec.Header().Get("Content-Type") != "application/json" || rec.Body.String() != want {
				t.Errorf("answer %d %q %q %q (OnError got status %d); want %d, challenge %q, the hook's JSON %s",
					rec.Code, rec.Header().Get("WWW-Authenticate"), rec.Header().Get("Content-Type"), rec.Body, call.status, c.status, c.challenge, want)
			}
			if call.authHeader != "" {
				t.Errorf("OnError sees the Authorization header %q", call.authHeader)
			}
			for _, target := range c.is {
				if !errors.Is(call.err, target) {
					t.Errorf("OnError's error %v does not wrap %v", call.err, target)
				}
			}
			for _, e := range reachable(call.err) {
				for _, tok := range []string{good, forged} {
					if strings.Contains(e.Error(), tok) {
						t.Errorf("an error reachable from OnError's quotes the token: %q", e.Error())
					}
				}
			}
		})
	}
}

func TestOnErrorWritingNothing(t *testing.T) {
	called := false
	m, err := httpauth.New(echoing{}, &httpauth.Options{OnError: func(http.ResponseWriter, *http.Request, int, error) { called = true }})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	m.Handler(http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if !called || rec.Code != 401 || rec.Body.String() != "Unauthorized\n" || rec.Header().Get("WWW-Authenticate") != "Bearer" {
		t.Errorf("a hook that writes nothing: called %v, answer %d %q %q; want the plain-text 401", called, rec.Code, rec.Body, rec.Header().Get("WWW-Authenticate"))
	}
}

func TestErrorWithOnError(t *testing.T) {
	var got []hookCall
	m, err := httpauth.New(echoing{}, &httpauth.Options{OnError: func(w http.ResponseWriter, r *http.Request, status int, err error) {
		got = append(got, hookCall{status: status, err: err})
		w.WriteHeader(status)
	}})
	if err != nil {
		t.Fatal(err)
	}
	errs := []error{fmt.Errorf("%w: token expired", auth.ErrUnauthenticated), fmt.Errorf("run r1: %w", errNotFound), errors.New("disk on fire")}
	var want []hookCall
	for _, e := range errs {
		rec := httptest.NewRecorder()
		m.Error(rec, httptest.NewRequest(http.MethodGet, "/", nil), e, errNotFound)
		code := httpauth.Status(e, errNotFound)
		want = append(want, hookCall{status: code, err: e})
		if rec.Code != code || (code == 401) != (rec.Header().Get("WWW-Authenticate") == `Bearer error="invalid_token"`) {
			t.Errorf("Error(%v): %d, challenge %q", e, rec.Code, rec.Header().Get("WWW-Authenticate"))
		}
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(hookCall{}), cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
		t.Errorf("OnError calls (-want +got):\n%s", diff)
	}
}
