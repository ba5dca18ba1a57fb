package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/storage"
)

// apiError is an error with the HTTP status and code it is answered with.
// Its message is sent to the client, so it says what to do and never holds
// anything the client should not learn.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// errorBody is the JSON of every error response.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, e *apiError) {
	var b errorBody
	b.Error.Code, b.Error.Message = e.code, e.message
	if e.status == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") == "" {
		w.Header().Set("WWW-Authenticate", "Bearer")
	}
	writeJSON(w, e.status, b)
}

// classify turns an error of the SDK into the answer a client gets.
// Messages of invalid input and refusals are the SDK's own, which name the
// problem and the fix; anything else is an internal error, logged with the
// request id and answered without details.
func classify(err error) *apiError {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, storage.ErrNotFound):
		// The same answer for another organisation's ids as for ids that
		// do not exist (P11).
		return errorf(http.StatusNotFound, "not_found", "not found in your organisation; check the id (a transcript exists once its run has ended)")
	case errors.Is(err, errBadImage):
		return errorf(http.StatusBadRequest, "bad_image", "%s", strings.TrimPrefix(err.Error(), errBadImage.Error()+": "))
	case errors.Is(err, compatool.ErrInvalid):
		return errorf(http.StatusBadRequest, "invalid", "%s", after(err.Error(), "compatool: invalid input: "))
	case errors.Is(err, storage.ErrInvalid):
		return errorf(http.StatusBadRequest, "invalid", "%s", after(err.Error(), "storage: invalid record: "))
	case errors.Is(err, auth.ErrForbidden):
		return errorf(http.StatusForbidden, "forbidden", "%s", after(err.Error(), "auth: forbidden: "))
	case errors.Is(err, auth.ErrUnauthenticated):
		return errorf(http.StatusUnauthorized, "unauthenticated", "the bearer token was refused; get a fresh one")
	case errors.Is(err, compatool.ErrClosed):
		return errShuttingDown
	}
	return nil
}

// after returns what follows prefix in s (an error's message past the
// wrapping of its sentinel), or s.
func after(s, prefix string) string {
	if i := strings.Index(s, prefix); i >= 0 {
		return s[i+len(prefix):]
	}
	return s
}

var errShuttingDown = errorf(http.StatusServiceUnavailable, "shutting_down", "the server is shutting down; retry in a few seconds")

// fail answers err. Errors without a client-facing meaning are logged and
// answered 500 with the request id that finds them in the log.
func (a *App) fail(w http.ResponseWriter, r *http.Request, err error) {
	if ae := classify(err); ae != nil {
		writeError(w, ae)
		return
	}
	if r.Context().Err() != nil {
		return // the client is gone
	}
	id := requestID(r.Context())
	a.log.ErrorContext(r.Context(), "request failed", "request_id", id, "err", err)
	writeError(w, errorf(http.StatusInternalServerError, "internal", "the server failed to answer; the server log has the details under request id %s", id))
}

// decodeJSON decodes exactly one JSON object from body into v, refusing
// unknown fields.
func decodeJSON(body io.Reader, v any, fields string) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); !errors.Is(err2, io.EOF) {
			return errorf(http.StatusBadRequest, "bad_json", "the body holds more than one JSON value; send one object")
		}
		return nil
	}
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the body exceeds %d bytes", mbe.Limit)
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "bad_json", "the body is empty; send a JSON object with %s", fields)
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "bad_json", "malformed JSON (%v); send a JSON object with %s", err, fields)
	case errors.As(err, &typ) && typ.Field == "":
		return errorf(http.StatusBadRequest, "bad_json", "the body must be a JSON object with %s", fields)
	case errors.As(err, &typ):
		return errorf(http.StatusBadRequest, "bad_json", "field %q must be a JSON %s", typ.Field, typ.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errorf(http.StatusBadRequest, "unknown_field", "%s; the accepted fields are %s", strings.TrimPrefix(err.Error(), "json: "), fields)
	}
	return errorf(http.StatusBadRequest, "bad_json", "%v; send a JSON object with %s", err, fields)
}

// page reads ?after= and ?limit=.
func page(r *http.Request) (storage.Page, error) {
	p := storage.Page{After: r.URL.Query().Get("after")}
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > storage.MaxPageLimit {
			return p, errorf(http.StatusBadRequest, "bad_query", "limit must be an integer from 1 to %d", storage.MaxPageLimit)
		}
		p.Limit = n
	}
	if p.After != "" {
		if err := storage.ValidID(p.After); err != nil {
			return p, errorf(http.StatusBadRequest, "bad_query", "after must be an id from a previous page's \"next\"")
		}
	}
	return p, nil
}

func newList[S, T any](p storage.Page, items []S, conv func(S) T, id func(S) string) List[T] {
	out := List[T]{Items: make([]T, len(items))}
	for i, it := range items {
		out.Items[i] = conv(it)
	}
	if len(items) == p.N() && len(items) > 0 {
		out.Next = id(items[len(items)-1])
	}
	return out
}

type ctxKey int

const infoKey ctxKey = iota

// reqInfo is what the access log learns about a request as it is served.
type reqInfo struct {
	id  string
	org string
}

func requestID(ctx context.Context) string {
	if i, ok := ctx.Value(infoKey).(*reqInfo); ok {
		return i.id
	}
	return ""
}

func setOrg(ctx context.Context, org string) {
	if i, ok := ctx.Value(infoKey).(*reqInfo); ok {
		i.org = org
	}
}

// observe gives each request an id (X-Request-Id) and logs it when it
// ends.
func (a *App) observe(next http.Handler, level slog.Level) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		rand.Read(b[:])
		info := &reqInfo{id: hex.EncodeToString(b[:])}
		w.Header().Set("X-Request-Id", info.id)
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), infoKey, info)))
		a.log.Log(r.Context(), level, "request", "request_id", info.id, "method", r.Method, "path", r.URL.Path,
			"status", sw.status, "bytes", sw.bytes, "duration_ms", float64(time.Since(start).Microseconds())/1000,
			"org", info.org, "remote", r.RemoteAddr)
	})
}

// statusWriter records the status and size of a response for the access
// log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// authError answers a request httpauth refused (its Options.OnError), in
// the API's JSON. httpauth has set the challenge and logged the reason; err
// never holds the token.
func (a *App) authError(w http.ResponseWriter, r *http.Request, status int, err error) {
	switch status {
	case http.StatusUnauthorized:
		writeError(w, errorf(status, "unauthenticated", "send a valid, unexpired token as \"Authorization: Bearer <token>\"; %s", a.authHint))
	case http.StatusBadRequest:
		writeError(w, errorf(status, "bad_request", "the request is malformed; send one Authorization header, of the form \"Bearer <token>\""))
	case http.StatusForbidden:
		writeError(w, errorf(status, "forbidden", "the token does not grant access to this API; sign in to your organisation and send a fresh token"))
	default:
		a.fail(w, r, err) // logged with the request id, answered 500
	}
}

// noEndpoint answers a path the API does not serve.
func noEndpoint(w http.ResponseWriter, _ *http.Request) {
	writeError(w, errorf(http.StatusNotFound, "no_endpoint", "no such endpoint; the API is listed in examples/server/README.md"))
}

// methodNotAllowed answers a method a path does not take.
func methodNotAllowed(methods []string) http.HandlerFunc {
	allow := strings.Join(slices.Sorted(slices.Values(methods)), ", ")
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, errorf(http.StatusMethodNotAllowed, "method_not_allowed", "this endpoint takes %s", allow))
	}
}
