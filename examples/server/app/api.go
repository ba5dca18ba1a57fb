package app

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/httpauth"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/storage"
)

// Headers (or query parameters "operation" and "reason") that a staff
// request must carry: they become the audit record of the access (P12).
const (
	HeaderStaffOperation = "Compatool-Staff-Operation"
	HeaderStaffReason    = "Compatool-Staff-Reason"
)

// routes builds the server's handler. Every answer of the API is JSON,
// errors included: those of the routing (no such path, a method the path
// does not take) and httpauth's refusals (see authError).
func (a *App) routes() http.Handler {
	api := http.NewServeMux()
	methods := map[string][]string{}
	handle := func(pattern string, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		api.HandleFunc(pattern, h)
		methods[path] = append(methods[path], method)
		if method == http.MethodGet {
			methods[path] = append(methods[path], http.MethodHead)
		}
	}
	handle("GET /v1/task-sets", a.listTaskSets)
	handle("POST /v1/submissions", a.createSubmission)
	handle("GET /v1/submissions", a.read(false, a.listSubmissions))
	handle("GET /v1/submissions/{id}", a.read(false, a.getSubmission))
	handle("POST /v1/submissions/{id}/publish", a.write(a.publish))
	handle("POST /v1/submissions/{id}/unpublish", a.write(a.unpublish))
	handle("POST /v1/submissions/{id}/cancel", a.write(a.cancel))
	handle("DELETE /v1/submissions/{id}", a.write(a.erase))
	handle("GET /v1/runs", a.read(false, a.listRuns))
	handle("GET /v1/runs/{id}", a.read(false, a.getRun))
	handle("GET /v1/runs/{id}/transcript", a.read(false, a.transcript))
	handle("GET /v1/audit", a.read(false, a.audit))
	// Staff reads of one organisation's data; each writes an audit record
	// before any data is read.
	handle("GET /v1/staff/orgs/{org}/submissions", a.read(true, a.listSubmissions))
	handle("GET /v1/staff/orgs/{org}/submissions/{id}", a.read(true, a.getSubmission))
	handle("GET /v1/staff/orgs/{org}/runs", a.read(true, a.listRuns))
	handle("GET /v1/staff/orgs/{org}/runs/{id}", a.read(true, a.getRun))
	handle("GET /v1/staff/orgs/{org}/runs/{id}/transcript", a.read(true, a.transcript))
	handle("GET /v1/staff/orgs/{org}/audit", a.read(true, a.audit))
	// A pattern without a method is less specific than one with, so these
	// take only the methods their path does not.
	for path, m := range methods {
		api.Handle(path, methodNotAllowed(m))
	}
	api.HandleFunc("/v1/", noEndpoint)

	mux := http.NewServeMux()
	mux.Handle("/v1/", a.observe(a.open(a.mw.Handler(a.limit(api, principalKey))), a.accessLevel))
	mux.Handle("GET /v1/public/runs/{id}/transcript", a.observe(a.open(a.limit(http.HandlerFunc(a.publicTranscript), addrKey)), a.accessLevel))
	mux.Handle("GET /healthz", a.observe(http.HandlerFunc(a.healthz), a.probeLevel))
	mux.Handle("GET /readyz", a.observe(http.HandlerFunc(a.readyz), a.probeLevel))
	// The MCP gateway authenticates each run's agent with the run's own
	// token; the API's bearer tokens and rate limits do not apply.
	mux.Handle("/runs/", a.h.GatewayHandler())
	mux.Handle("/", a.observe(http.HandlerFunc(noEndpoint), a.accessLevel))
	return mux
}

// open refuses API requests once the server is draining.
func (a *App) open(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.draining.Load() {
			w.Header().Set("Retry-After", "5")
			writeError(w, errShuttingDown)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// principalKey is the rate-limit key of the request's principal: its
// organisation, which it also records for the access log.
func principalKey(r *http.Request) string {
	p := httpauth.Principal(r.Context())
	if p.Org != "" {
		setOrg(r.Context(), string(p.Org))
		return "org:" + string(p.Org)
	}
	return "sub:" + p.Subject
}

func addrKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "addr:" + host
}

// limit applies the per-organisation (or per-address) rate limit.
func (a *App) limit(next http.Handler, key func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, wait := a.limiter.allow(key(r), time.Now())
		if !ok {
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeError(w, errorf(http.StatusTooManyRequests, "rate_limited",
				"too many requests: the limit is %g per second for each organisation (and each address on public endpoints); retry after %d s", float64(a.limiter.limit), secs))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// scope returns the scope of a request: the principal's own organisation, or
// for a staff route the staff scope of the {org} in the path, with the
// operation and reason of the request.
func scope(r *http.Request, staff bool) (auth.Scope, error) {
	p := httpauth.Principal(r.Context())
	if !staff {
		return auth.ScopeFor(p)
	}
	q := r.URL.Query()
	op := cmp.Or(r.Header.Get(HeaderStaffOperation), q.Get("operation"))
	reason := cmp.Or(r.Header.Get(HeaderStaffReason), q.Get("reason"))
	if op == "" || reason == "" {
		return auth.Scope{}, errorf(http.StatusForbidden, "forbidden",
			"staff access needs an operation (%q or %q) and a reason, in the %s and %s headers or the operation and reason query parameters",
			auth.OpSupport, auth.OpInfrastructure, HeaderStaffOperation, HeaderStaffReason)
	}
	return auth.StaffScope(p, auth.StaffRequest{Org: auth.OrgID(r.PathValue("org")), Operation: auth.Operation(op), Reason: reason})
}

type scopedHandler func(w http.ResponseWriter, r *http.Request, s auth.Scope) error

// read serves a read with the request's scope.
func (a *App) read(staff bool, h scopedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := scope(r, staff)
		if err == nil {
			err = validPathID(r)
		}
		if err == nil {
			err = h(w, r, s)
		}
		if err != nil {
			a.fail(w, r, err)
		}
	}
}

// write serves a change to one of the principal's submissions.
func (a *App) write(h func(ctx context.Context, s auth.Scope, id storage.SubmissionID) error) http.HandlerFunc {
	return a.read(false, func(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
		id := storage.SubmissionID(r.PathValue("id"))
		if err := h(r.Context(), s, id); err != nil {
			return err
		}
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		sub, err := a.h.Submission(r.Context(), s, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, submissionOut(sub))
		return nil
	})
}

func validPathID(r *http.Request) error {
	if id := r.PathValue("id"); id != "" {
		if err := storage.ValidID(id); err != nil {
			return errorf(http.StatusBadRequest, "bad_id", "%q is not an id: ids are 1 to %d letters, digits, '-', '_', '.' or ':'", id, storage.MaxIDBytes)
		}
	}
	return nil
}

func (a *App) listTaskSets(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, List[TaskSet]{Items: a.TaskSets()})
}

// submissionRequest is the JSON of POST /v1/submissions: the body itself,
// or the "submission" part of a multipart upload.
type submissionRequest struct {
	AgentName string `json:"agent_name"`
	TaskSet   string `json:"task_set"`
	// Image is an image ID your organisation submitted before; empty when
	// the image is uploaded.
	Image  string `json:"image,omitempty"`
	Public bool   `json:"public"`
}

// Deadlines for reading request bodies and writing transcripts.
const (
	bodyTimeout   = 30 * time.Second
	uploadTimeout = 10 * time.Minute
	streamTimeout = 10 * time.Minute
)

const submissionFields = `"agent_name", "task_set", "image" (an image ID, unless you upload the archive) and "public"`

func (a *App) createSubmission(w http.ResponseWriter, r *http.Request) {
	if err := a.submit(w, r); err != nil {
		a.fail(w, r, err)
	}
}

func (a *App) submit(w http.ResponseWriter, r *http.Request) error {
	p := httpauth.Principal(r.Context())
	s, err := auth.ScopeFor(p)
	if err != nil {
		return err
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	var req submissionRequest
	var tasks []storage.TaskID
	switch mt {
	case "application/json":
		// A body trickled in slowly must not hold the connection.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes)
		if err := decodeJSON(r.Body, &req, submissionFields); err != nil {
			return err
		}
		if tasks, err = a.checkRequest(req, false); err != nil {
			return err
		}
		if !imageIDRe.MatchString(req.Image) {
			return errorf(http.StatusBadRequest, "invalid", "image %q is not an image ID (sha256:<64 hex digits>); upload the `docker save` archive as multipart/form-data instead", req.Image)
		}
		// Held until the submission is stored, so that an erasure of the
		// organisation's other submissions of the image cannot remove it
		// in between.
		unlock, err := a.refs.lock(r.Context(), req.Image)
		if err != nil {
			return err
		}
		defer unlock()
		ok, err := a.ownsImage(r.Context(), s, req.Image)
		if err != nil {
			return err
		}
		if !ok {
			return errorf(http.StatusBadRequest, "unknown_image", "your organisation has not submitted image %s; upload its archive as multipart/form-data", req.Image)
		}
		if err := a.useImage(s, req.Image); err != nil {
			return err
		}
	case "multipart/form-data":
		if params["boundary"] == "" {
			return errorf(http.StatusBadRequest, "bad_multipart", "the multipart Content-Type has no boundary")
		}
		select {
		case a.uploadSlots <- struct{}{}:
			defer func() { <-a.uploadSlots }()
		case <-r.Context().Done():
			return r.Context().Err()
		}
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadTimeout))
		r.Body = http.MaxBytesReader(w, r.Body, a.cfg.MaxUploadBytes)
		var unlock func()
		if req, tasks, unlock, err = a.upload(r, s); err != nil {
			return err
		}
		defer unlock()
	default:
		return errorf(http.StatusUnsupportedMediaType, "unsupported_media_type",
			"send application/json naming an image ID, or multipart/form-data with a \"submission\" JSON part and an \"image\" part holding a `docker save` archive")
	}
	sub, err := a.h.Submit(r.Context(), p, compatool.Submission{AgentName: req.AgentName, Image: req.Image, Tasks: tasks, Public: req.Public})
	if err != nil {
		// An upload that was never submitted leaves no image behind.
		a.releaseAfterFailure(r.Context(), req.Image)
		return err
	}
	a.owned.Store(imageKey(s.Org(), sub.Image), true)
	w.Header().Set("Location", "/v1/submissions/"+string(sub.ID))
	writeJSON(w, http.StatusCreated, submissionOut(sub))
	return nil
}

// checkRequest checks a submission request before anything is imported or
// stored, and returns its tasks.
func (a *App) checkRequest(req submissionRequest, upload bool) ([]storage.TaskID, error) {
	set, ok := a.sets[req.TaskSet]
	if !ok {
		return nil, errorf(http.StatusBadRequest, "unknown_task_set", "task set %q does not exist; choose one of %s (GET /v1/task-sets)", req.TaskSet, strings.Join(a.setNames, ", "))
	}
	name := req.AgentName
	switch {
	case strings.TrimSpace(name) == "":
		return nil, errorf(http.StatusBadRequest, "invalid", "agent_name is required")
	case len(name) > compatool.MaxAgentNameBytes:
		return nil, errorf(http.StatusBadRequest, "invalid", "agent_name is %d bytes; the limit is %d", len(name), compatool.MaxAgentNameBytes)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, unicode.IsControl):
		return nil, errorf(http.StatusBadRequest, "invalid", "agent_name must be printable UTF-8")
	}
	if upload && req.Image != "" {
		return nil, errorf(http.StatusBadRequest, "invalid", "leave \"image\" out when you upload the archive: the server names the image")
	}
	return slices.Clone(set.Tasks), nil
}

// upload reads a multipart submission: a "submission" part (JSON) first,
// then an "image" part holding a `docker save` archive, which is checked and
// imported into the sandbox before the submission is stored. On success it
// holds the image's lock, which the caller releases with unlock once the
// submission is stored (or failed).
func (a *App) upload(r *http.Request, s auth.Scope) (_ submissionRequest, _ []storage.TaskID, unlock func(), _ error) {
	var req submissionRequest
	mr, err := r.MultipartReader()
	if err != nil {
		return req, nil, nil, errorf(http.StatusBadRequest, "bad_multipart", "%v", err)
	}
	part, err := nextPart(mr, "submission")
	if err != nil {
		return req, nil, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(part, a.cfg.MaxBodyBytes+1))
	if err != nil {
		return req, nil, nil, multipartError(err, a.cfg.MaxUploadBytes)
	}
	if int64(len(data)) > a.cfg.MaxBodyBytes {
		return req, nil, nil, errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the submission part exceeds %d bytes", a.cfg.MaxBodyBytes)
	}
	if err := decodeJSON(bytes.NewReader(data), &req, submissionFields); err != nil {
		return req, nil, nil, err
	}
	tasks, err := a.checkRequest(req, true)
	if err != nil {
		return req, nil, nil, err
	}
	part, err = nextPart(mr, "image")
	if err != nil {
		return req, nil, nil, err
	}
	f, err := os.CreateTemp(a.uploads, "upload-*.tar")
	if err != nil {
		return req, nil, nil, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := io.Copy(f, part); err != nil {
		return req, nil, nil, multipartError(err, a.cfg.MaxUploadBytes)
	}
	if _, err := mr.NextPart(); !errors.Is(err, io.EOF) {
		if err != nil {
			return req, nil, nil, multipartError(err, a.cfg.MaxUploadBytes)
		}
		return req, nil, nil, errorf(http.StatusBadRequest, "bad_multipart", "send exactly two parts, \"submission\" and then \"image\"")
	}
	if err := f.Close(); err != nil {
		return req, nil, nil, err
	}
	id, err := checkArchive(f.Name(), a.cfg.MaxImageBytes)
	if err != nil {
		return req, nil, nil, err
	}
	if unlock, err = a.refs.lock(r.Context(), id); err != nil {
		return req, nil, nil, err
	}
	// Recorded before the import, so that an imported image always has a
	// record.
	if err := a.useImage(s, id); err != nil {
		unlock()
		return req, nil, nil, err
	}
	if err := a.importer.Import(r.Context(), f.Name(), id); err != nil {
		a.releaseAfterFailure(r.Context(), id)
		unlock()
		return req, nil, nil, importError(err, f.Name())
	}
	a.log.InfoContext(r.Context(), "image imported", "request_id", requestID(r.Context()), "org", s.Org(), "image", id)
	req.Image = id
	return req, tasks, unlock, nil
}

// releaseAfterFailure releases image after a submission of it failed; the
// caller holds image's lock.
func (a *App) releaseAfterFailure(ctx context.Context, image string) {
	if err := a.releaseImage(context.WithoutCancel(ctx), image); err != nil {
		a.log.ErrorContext(ctx, "remove the image of a failed submission; the next start tries again", "request_id", requestID(ctx), "image", image, "err", err)
	}
}

func nextPart(mr *multipart.Reader, name string) (*multipart.Part, error) {
	part, err := mr.NextPart()
	if errors.Is(err, io.EOF) {
		return nil, errorf(http.StatusBadRequest, "bad_multipart", "the %q part is missing; send a \"submission\" JSON part, then an \"image\" part", name)
	}
	if err != nil {
		return nil, multipartError(err, 0)
	}
	if part.FormName() != name {
		return nil, errorf(http.StatusBadRequest, "bad_multipart", "expected the %q part, got %q; send a \"submission\" JSON part, then an \"image\" part", name, part.FormName())
	}
	return part, nil
}

func multipartError(err error, limit int64) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the upload exceeds %d bytes; make the image smaller (a static binary on an empty base is enough)", limit)
	}
	return errorf(http.StatusBadRequest, "bad_multipart", "malformed multipart body: %v", err)
}

func (a *App) listSubmissions(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	p, err := page(r)
	if err != nil {
		return err
	}
	subs, err := a.h.Submissions(r.Context(), s, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(p, subs, submissionOut, func(s storage.Submission) string { return string(s.ID) }))
	return nil
}

func (a *App) getSubmission(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	sub, err := a.h.Submission(r.Context(), s, storage.SubmissionID(r.PathValue("id")))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, submissionOut(sub))
	return nil
}

func (a *App) publish(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	return a.h.Publish(ctx, s, id)
}

func (a *App) unpublish(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	return a.h.Unpublish(ctx, s, id)
}

func (a *App) cancel(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	return a.h.Cancel(ctx, s, id)
}

// erase erases a submission and then removes its image from the sandbox
// if no submission of any organisation uses it any more (P4, P14). Runs of
// the submission still being torn down keep the image's files until they
// end (see ocisandbox's RemoveImage).
func (a *App) erase(ctx context.Context, s auth.Scope, id storage.SubmissionID) error {
	sub, err := a.h.Submission(ctx, s, id)
	if err != nil {
		return err
	}
	unlock, err := a.refs.lock(ctx, sub.Image)
	if err != nil {
		return err
	}
	defer unlock()
	if err := a.h.Erase(ctx, s, id); err != nil {
		return err
	}
	a.forgetImages(s.Org())
	// The submission is gone; a removal that fails now is finished at the
	// next start.
	if err := a.releaseImage(context.WithoutCancel(ctx), sub.Image); err != nil {
		a.log.ErrorContext(ctx, "remove the image of an erased submission; the next start tries again", "request_id", requestID(ctx), "image", sub.Image, "err", err)
	}
	return nil
}

func (a *App) listRuns(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	sub := r.URL.Query().Get("submission")
	if err := storage.ValidID(sub); err != nil {
		return errorf(http.StatusBadRequest, "bad_query", "name the submission whose runs to list: ?submission=<id>")
	}
	p, err := page(r)
	if err != nil {
		return err
	}
	if w := r.URL.Query().Get("wait"); w != "" {
		if err := a.wait(r.Context(), s, storage.SubmissionID(sub), w); err != nil {
			return err
		}
	}
	runs, err := a.h.Runs(r.Context(), s, storage.SubmissionID(sub), p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(p, runs, runOut, func(r storage.Run) string { return string(r.ID) }))
	return nil
}

// maxWait bounds ?wait=.
const maxWait = 5 * time.Minute

// wait blocks until every run of sub is terminal or d (a duration such as
// "30s", at most maxWait) has passed, so that clients need not poll.
func (a *App) wait(ctx context.Context, s auth.Scope, sub storage.SubmissionID, d string) error {
	dur, err := time.ParseDuration(d)
	if err != nil || dur <= 0 || dur > maxWait {
		return errorf(http.StatusBadRequest, "bad_query", "wait must be a duration from 1s to %s, such as wait=30s", maxWait)
	}
	wctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	// A shutdown ends the wait: queued runs will not move until the next
	// start.
	defer context.AfterFunc(a.drained, cancel)()
	_, err = a.h.Wait(wctx, s, sub)
	if err != nil && wctx.Err() != nil && ctx.Err() == nil {
		return nil // time is up: answer with the runs as they are
	}
	return err
}

func (a *App) getRun(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	run, err := a.h.Run(r.Context(), s, storage.RunID(r.PathValue("id")))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, runOut(run))
	return nil
}

func (a *App) transcript(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	rc, info, err := a.h.Transcript(r.Context(), s, storage.RunID(r.PathValue("id")))
	if err != nil {
		return err
	}
	a.stream(w, r, rc, info)
	return nil
}

func (a *App) publicTranscript(w http.ResponseWriter, r *http.Request) {
	if err := validPathID(r); err != nil {
		a.fail(w, r, err)
		return
	}
	rc, info, err := a.h.PublicTranscript(r.Context(), storage.RunID(r.PathValue("id")))
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			err = errorf(http.StatusNotFound, "not_found", "no published transcript of that run; its submitter has not published it")
		}
		a.fail(w, r, err)
		return
	}
	a.stream(w, r, rc, info)
}

// stream copies a stored transcript to the client as it is read.
func (a *App) stream(w http.ResponseWriter, r *http.Request, rc io.ReadCloser, info storage.TranscriptInfo) {
	defer rc.Close()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	w.Header().Set("Cache-Control", "private, no-store")
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(streamTimeout))
	if _, err := io.Copy(w, rc); err != nil && r.Context().Err() == nil {
		a.log.WarnContext(r.Context(), "transcript stream broken", "request_id", requestID(r.Context()), "run", info.Run, "err", err)
	}
}

func (a *App) audit(w http.ResponseWriter, r *http.Request, s auth.Scope) error {
	p, err := page(r)
	if err != nil {
		return err
	}
	recs, err := a.h.Audit(r.Context(), s, p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newList(p, recs, auditOut, func(r storage.AuditRecord) string { return r.ID }))
	return nil
}

func (a *App) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz reports whether the server takes work: not draining, and its
// metadata store answers.
func (a *App) readyz(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		writeError(w, errShuttingDown)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := a.meta.GetTask(ctx, a.sets[NotesSet].Tasks[0]); err != nil {
		a.log.WarnContext(r.Context(), "not ready", "err", err)
		writeError(w, errorf(http.StatusServiceUnavailable, "not_ready", "the metadata store does not answer; the server log says why"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
