// Package httpauth puts an [auth.Authenticator] in front of HTTP handlers:
// it takes the bearer token of each request, verifies it, and hands the
// handler the verified [auth.Principal] through the request's context. It
// also maps the errors of the SDK to HTTP statuses, so that every host
// answers refusals alike.
//
// It keeps promise P10 of DESIGN.md on the wire: the only credential read is
// an "Authorization: Bearer" header carrying a short-lived JWT. Cookies
// (Clerk's "__session" included) and query-string tokens are never looked
// at, so a request cannot be authenticated by anything a browser sends on
// its own, and tokens never end up in URLs or access logs. The token is
// removed from the request before the next handler sees it, and never
// written to a response or a log. It serves P11 through [Status]:
// another organisation's ids answer 404, as missing ones do, so their
// existence is not leaked.
//
// # Responses
//
// A request without a bearer token gets 401 with the challenge
// `WWW-Authenticate: Bearer realm="…"`; a refused token gets 401 with
// `error="invalid_token"` added (RFC 6750 §3); a request with more than one
// Authorization header gets 400 with `error="invalid_request"`. Bodies are
// the status text only: refusal reasons go to the [Options.Logger], since
// they are for operators, not for whoever holds a forged token.
//
// A host that answers errors in its own format (JSON, say) sets
// [Options.OnError]: the middleware still chooses the status and sets the
// challenge, and the host writes the body.
package httpauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/compatool/compatool/auth"
)

// Options configure a [Middleware]. The zero value (or nil) is usable.
type Options struct {
	// Realm names the protection space in WWW-Authenticate challenges;
	// omitted when empty. It may not contain quotes, backslashes or
	// control characters.
	Realm string
	// Logger receives one Info line per refused request, with the reason
	// and never the token; nil discards them.
	Logger *slog.Logger
	// OnError, when set, writes the answer to each request the middleware
	// refuses and to each [Middleware.Error], in place of the plain-text
	// status. It must write a response with the given status; before it is
	// called the middleware has set WWW-Authenticate where the status needs
	// it (401, and 400 for a malformed Authorization). If it writes nothing,
	// the middleware writes the plain-text answer.
	//
	// r is the request without its Authorization header. err says why, for
	// logs and for choosing a message; its text is for operators, not for
	// the client. For a refusal, err wraps [auth.ErrUnauthenticated] when
	// the header is missing or malformed, and otherwise those of
	// auth.ErrUnauthenticated, [auth.ErrForbidden], context.Canceled and
	// context.DeadlineExceeded that the authenticator's error wraps; its
	// text never holds the token, and no error of the authenticator's (which
	// might quote it) is reachable from it. For [Middleware.Error], err is
	// the error given.
	OnError func(w http.ResponseWriter, r *http.Request, status int, err error)
}

// Middleware authenticates requests with one [auth.Authenticator]. It is
// safe for concurrent use.
type Middleware struct {
	auth      auth.Authenticator
	challenge string
	log       *slog.Logger
	onError   func(w http.ResponseWriter, r *http.Request, status int, err error)
}

// New returns a Middleware that authenticates with a. opts may be nil.
func New(a auth.Authenticator, opts *Options) (*Middleware, error) {
	if a == nil {
		return nil, errors.New("httpauth: nil Authenticator; pass a clerkauth or devauth authenticator")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if strings.ContainsFunc(o.Realm, func(r rune) bool { return r == '"' || r == '\\' || r < ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("httpauth: Options.Realm %q contains a quote, backslash or control character", o.Realm)
	}
	m := &Middleware{auth: a, challenge: "Bearer", log: o.Logger, onError: o.OnError}
	if o.Realm != "" {
		m.challenge = `Bearer realm="` + o.Realm + `"`
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m, nil
}

type contextKey struct{}

// NewContext returns a copy of ctx carrying p, as the middleware passes it
// to handlers; tests of handlers use it to stand in for the middleware.
func NewContext(ctx context.Context, p *auth.Principal) context.Context {
	return context.WithValue(ctx, contextKey{}, p)
}

// Principal returns the principal the middleware verified for the request
// whose context ctx is, or nil outside a [Middleware.Handler].
func Principal(ctx context.Context) *auth.Principal {
	p, _ := ctx.Value(contextKey{}).(*auth.Principal)
	return p
}

// Handler returns a handler that authenticates each request and passes it
// on to next with the principal in its context (see [Principal]) and
// without its Authorization header; requests it refuses never reach next.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		values := r.Header.Values("Authorization")
		if len(values) > 1 {
			m.refuse(w, r, http.StatusBadRequest, "invalid_request", errTwoHeaders)
			return
		}
		token, ok := bearer(values)
		if !ok {
			m.refuse(w, r, http.StatusUnauthorized, "", errNoToken)
			return
		}
		p, err := m.auth.Authenticate(r.Context(), token)
		if err == nil && p == nil {
			err = fmt.Errorf("%w: authenticator returned no principal", auth.ErrUnauthenticated)
		}
		if err != nil {
			code := Status(err)
			errCode := ""
			if code == http.StatusUnauthorized {
				errCode = "invalid_token"
			}
			m.refuse(w, r, code, errCode, scrub(err, token))
			return
		}
		next.ServeHTTP(w, withoutToken(r.WithContext(NewContext(r.Context(), p))))
	})
}

var (
	errTwoHeaders = fmt.Errorf("%w: more than one Authorization header; send one", auth.ErrUnauthenticated)
	errNoToken    = fmt.Errorf("%w: no bearer token; send \"Authorization: Bearer <token>\"", auth.ErrUnauthenticated)
)

// withoutToken returns r without its Authorization header; r itself, the
// caller's, is not changed.
func withoutToken(r *http.Request) *http.Request {
	r2 := *r
	r2.Header = r.Header.Clone()
	r2.Header.Del("Authorization")
	return &r2
}

// refusal is an authenticator's error with the token cut out of its text.
// It unwraps to the sentinels the error matched and to nothing else, so
// that no error reachable from it can quote the token.
type refusal struct {
	msg string
	is  []error
}

func (e *refusal) Error() string   { return e.msg }
func (e *refusal) Unwrap() []error { return e.is }

// scrub returns err as a [refusal]: an authenticator of another author
// might quote the token in its errors.
func scrub(err error, token string) error {
	r := &refusal{msg: err.Error()}
	if token != "" {
		r.msg = strings.ReplaceAll(r.msg, token, "[REDACTED]")
	}
	for _, target := range []error{auth.ErrUnauthenticated, auth.ErrForbidden, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, target) {
			r.is = append(r.is, target)
		}
	}
	return r
}

// refuse logs a refused request and answers it with code, the challenge
// for 400 and 401, and the host's or the plain-text body.
func (m *Middleware) refuse(w http.ResponseWriter, r *http.Request, code int, errCode string, err error) {
	m.log.InfoContext(r.Context(), "httpauth: request refused", "reason", err.Error())
	if code == http.StatusUnauthorized || code == http.StatusBadRequest {
		m.setChallenge(w, errCode)
	}
	m.write(w, withoutToken(r), code, err)
}

// bearer extracts the token of an "Authorization: Bearer <token>" header.
// The scheme is case-insensitive (RFC 9110 §11.1); the token is the rest of
// the value, which the authenticator then checks.
func bearer(values []string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.Trim(token, " "), true
}

// Error answers err, which a handler behind the middleware met while
// serving r, with [Status] and, for 401, the Bearer challenge with
// error="invalid_token". The body is the status text, or what
// [Options.OnError] writes: err's message is never sent by this package, as
// it may name ids or claims.
func (m *Middleware) Error(w http.ResponseWriter, r *http.Request, err error, notFound ...error) {
	code := Status(err, notFound...)
	if code == http.StatusUnauthorized {
		m.setChallenge(w, "invalid_token")
	}
	m.write(w, r, code, err)
}

func (m *Middleware) setChallenge(w http.ResponseWriter, errCode string) {
	c := m.challenge
	if errCode != "" {
		if c == "Bearer" {
			c += " "
		} else {
			c += ", "
		}
		c += `error="` + errCode + `"`
	}
	w.Header().Set("WWW-Authenticate", c)
}

// write writes the body of an error answer: the host's, or the status text
// if the host has none or wrote nothing.
func (m *Middleware) write(w http.ResponseWriter, r *http.Request, code int, err error) {
	if m.onError != nil {
		tw := &trackingWriter{ResponseWriter: w}
		m.onError(tw, r, code, err)
		if tw.wrote {
			return
		}
	}
	http.Error(w, http.StatusText(code), code)
}

// trackingWriter records whether a response was started through it.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *trackingWriter) WriteHeader(code int) {
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackingWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *trackingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Status returns the HTTP status for err: 200 for nil, 401 for
// [auth.ErrUnauthenticated], 403 for [auth.ErrForbidden], 404 for any of
// notFound, 500 otherwise.
//
// notFound lists the not-found sentinels of the layers the host calls, in
// practice storage.ErrNotFound. They are passed in rather than imported
// because auth sits on a floor below storage (DESIGN.md). Stores answer a
// read of another organisation's id with their not-found error, so the
// caller sees 404 whether the id exists elsewhere or not at all (P11).
func Status(err error, notFound ...error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, auth.ErrUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, auth.ErrForbidden):
		return http.StatusForbidden
	}
	for _, target := range notFound {
		if target != nil && errors.Is(err, target) {
			return http.StatusNotFound
		}
	}
	return http.StatusInternalServerError
}
