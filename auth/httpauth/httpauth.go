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
}

// Middleware authenticates requests with one [auth.Authenticator]. It is
// safe for concurrent use.
type Middleware struct {
	auth      auth.Authenticator
	challenge string
	log       *slog.Logger
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
	m := &Middleware{auth: a, challenge: "Bearer", log: o.Logger}
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
			m.log.InfoContext(r.Context(), "httpauth: request refused", "reason", "more than one Authorization header")
			m.challengeWith(w, http.StatusBadRequest, "invalid_request")
			return
		}
		token, ok := bearer(values)
		if !ok {
			m.log.InfoContext(r.Context(), "httpauth: request refused", "reason", "no bearer token")
			m.challengeWith(w, http.StatusUnauthorized, "")
			return
		}
		p, err := m.auth.Authenticate(r.Context(), token)
		if err == nil && p == nil {
			err = fmt.Errorf("%w: authenticator returned no principal", auth.ErrUnauthenticated)
		}
		if err != nil {
			// An authenticator of another author might quote the token.
			reason := strings.ReplaceAll(err.Error(), token, "[REDACTED]")
			m.log.InfoContext(r.Context(), "httpauth: request refused", "reason", reason)
			m.Error(w, err)
			return
		}
		r = r.WithContext(NewContext(r.Context(), p))
		r.Header = r.Header.Clone()
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r)
	})
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

// Error answers err with [Status] and, for 401, the Bearer challenge with
// error="invalid_token". The body is the status text: err's message is
// never sent, as it may name ids or claims.
func (m *Middleware) Error(w http.ResponseWriter, err error, notFound ...error) {
	code := Status(err, notFound...)
	if code == http.StatusUnauthorized {
		m.challengeWith(w, code, "invalid_token")
		return
	}
	http.Error(w, http.StatusText(code), code)
}

func (m *Middleware) challengeWith(w http.ResponseWriter, code int, errCode string) {
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
	http.Error(w, http.StatusText(code), code)
}

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
