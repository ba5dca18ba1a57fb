// Package app is Compatool's reference server: an HTTP JSON API on a
// [compatool.Harness], with the backends chosen by configuration alone. The
// command examples/server runs it; examples/quickstart embeds it.
//
// With the embedded defaults it needs nothing but a data directory and, for
// the sandbox, root and runc: submissions and runs in SQLite (sqlitestore),
// transcripts in files (filestore), local tokens signed by a key in the data
// directory (devauth), agents in OCI containers (ocisandbox), usage in an
// in-memory ledger (membilling). D1, R2 and Clerk replace the first three
// by configuration ([Config.Metadata], [Config.Transcripts], [Config.Auth]).
//
// It keeps the promises of DESIGN.md on the wire: the only credential is a
// short-lived bearer JWT (P10); every read goes through the caller's
// organisation scope, and another organisation's ids answer 404 like
// missing ones (P11); staff reads name an operation and a reason and leave
// an audit record before data is returned (P12); uploaded images are checked
// and imported into the sandbox and nowhere else (P14); transcripts are
// served as stored, redacted (P8), and publicly only once published (P9).
//
// # API
//
//	GET    /v1/task-sets
//	POST   /v1/submissions                      JSON, or multipart with the image archive
//	GET    /v1/submissions[?after=&limit=]
//	GET    /v1/submissions/{id}
//	POST   /v1/submissions/{id}/publish|unpublish|cancel
//	DELETE /v1/submissions/{id}                 erasure: runs, results, transcripts; the image once unused
//	GET    /v1/runs?submission={id}[&wait=30s][&after=&limit=]    wait: until all runs ended
//	GET    /v1/runs/{id}
//	GET    /v1/runs/{id}/transcript             the stored, redacted transcript
//	GET    /v1/audit                            staff accesses to your organisation
//	GET    /v1/staff/orgs/{org}/…               the reads above, for staff, audited
//	GET    /v1/public/runs/{id}/transcript      published transcripts, no token
//	/runs/{run}/mcp                             the runs' MCP gateway (run tokens)
//	GET    /healthz, /readyz
//
// # Errors
//
// Every API error is JSON, {"error": {"code": "…", "message": "…"}}, whose
// message says what to do. Bad input changes nothing.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/httpauth"
	"github.com/compatool/compatool/billing/membilling"
	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/storage"
)

// Backend names of [Config].
const (
	MetadataSQLite = "sqlite"
	MetadataD1     = "d1"
	MetadataMem    = "mem"

	TranscriptsFile = "file"
	TranscriptsR2   = "r2"
	TranscriptsMem  = "mem"

	SandboxOCI = "oci"
	SandboxMem = "mem"

	AuthDev   = "dev"
	AuthClerk = "clerk"
)

// maxConcurrentUploads bounds the image uploads in progress at once, and so
// the disk space they hold (each at most Config.MaxUploadBytes).
const maxConcurrentUploads = 4

// Config configures an [App]. Zero fields take the documented defaults;
// DataDir and GatewayURL are required.
type Config struct {
	// DataDir holds what the embedded defaults keep: compatool.db, the
	// transcripts, the key that seals task content (task-keys.json), the
	// devauth signing key (devauth.key), imported images, which
	// organisations use each image (image-refs) and uploads in progress.
	// It is created with mode 0700.
	DataDir string
	// GatewayURL is the base URL at which the sandbox reaches this server's
	// /runs/ endpoints (the MCP gateway), e.g. "http://127.0.0.1:8080".
	GatewayURL string

	// Metadata is MetadataSQLite (default), MetadataD1 or MetadataMem.
	Metadata string
	// Transcripts is TranscriptsFile (default), TranscriptsR2 or
	// TranscriptsMem.
	Transcripts string
	// Sandbox is SandboxOCI (default) or SandboxMem. SandboxMem runs every
	// uploaded image as the built-in reference agent, in-process: for
	// trials and load tests only, never for untrusted agents.
	Sandbox string
	// Auth is AuthDev (default) or AuthClerk.
	Auth string
	// KeyFile is the envelope key file that seals task content (and, with
	// SQLite or D1, submission metadata); default DataDir/task-keys.json,
	// created on first start.
	KeyFile string

	// Workers bounds the runs executing at once; default 4.
	Workers int
	// RunTimeout bounds each run's sandbox; default 2 minutes.
	RunTimeout time.Duration
	// MaxBodyBytes bounds a JSON body; default 64 KiB.
	MaxBodyBytes int64
	// MaxUploadBytes bounds an upload (the image archive); default 256 MiB.
	MaxUploadBytes int64
	// MaxImageBytes bounds an image's unpacked size; default 1 GiB.
	MaxImageBytes int64
	// RatePerOrg is the sustained requests per second an organisation may
	// make (and an address, to public endpoints); default 20. Burst is the
	// bucket's size; default 2×RatePerOrg.
	RatePerOrg float64
	Burst      int
	// StaffClaim is the token claim that marks staff; default
	// "compatool_staff".
	StaffClaim string

	OCI   OCIConfig
	D1    D1Config
	R2    R2Config
	Clerk ClerkConfig

	// Logger receives the server's structured logs; nil discards them.
	Logger *slog.Logger
	// LogRequests logs every API request at Info instead of Debug.
	LogRequests bool
}

// OCIConfig configures the ocisandbox backend.
type OCIConfig struct {
	// Runtime is "runc" (default) or "crun", or a path.
	Runtime string
	// StateDir holds running sandboxes; default ocisandbox's
	// (/run/compatool/ocisandbox).
	StateDir string
	// CacheDir holds imported images; default DataDir/images.
	CacheDir string
}

// D1Config configures the d1store backend.
type D1Config struct {
	AccountID, DatabaseID string
	// APIToken needs D1 edit permission.
	APIToken string
	// BaseURL overrides Cloudflare's API URL (for an emulator).
	BaseURL string
}

// R2Config configures the r2store backend (any S3 API works).
type R2Config struct {
	Bucket string
	// Endpoint is "https://<account id>.r2.cloudflarestorage.com" for R2.
	Endpoint                     string
	AccessKeyID, SecretAccessKey string
	Region                       string
	PathStyle                    bool
	Prefix                       string
}

// ClerkConfig configures the clerkauth backend.
type ClerkConfig struct {
	// Issuer is the instance's Frontend API URL.
	Issuer string
	// AuthorizedParties lists the front-end origins allowed to present
	// tokens.
	AuthorizedParties []string
	// JWKSURL defaults to the issuer's /.well-known/jwks.json.
	JWKSURL string
	// SecretKey is sent when fetching the JWKS from Clerk's Backend API.
	SecretKey string
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("app: Config.DataDir is required: the directory for the database, transcripts and keys")
	}
	if c.GatewayURL == "" {
		return errors.New("app: Config.GatewayURL is required: the base URL at which sandboxes reach this server, e.g. http://127.0.0.1:8080")
	}
	c.Metadata = cmp.Or(c.Metadata, MetadataSQLite)
	c.Transcripts = cmp.Or(c.Transcripts, TranscriptsFile)
	c.Sandbox = cmp.Or(c.Sandbox, SandboxOCI)
	c.Auth = cmp.Or(c.Auth, AuthDev)
	c.KeyFile = cmp.Or(c.KeyFile, filepath.Join(c.DataDir, "task-keys.json"))
	c.StaffClaim = cmp.Or(c.StaffClaim, "compatool_staff")
	c.OCI.CacheDir = cmp.Or(c.OCI.CacheDir, filepath.Join(c.DataDir, "images"))
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.RunTimeout <= 0 {
		c.RunTimeout = 2 * time.Minute
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.MaxUploadBytes <= 0 {
		c.MaxUploadBytes = 256 << 20
	}
	if c.MaxImageBytes <= 0 {
		c.MaxImageBytes = 1 << 30
	}
	if c.RatePerOrg <= 0 {
		c.RatePerOrg = 20
	}
	if c.Burst <= 0 {
		c.Burst = max(1, int(2*c.RatePerOrg))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// App is a running server: the harness with its backends, and the HTTP
// handler in front of it.
type App struct {
	cfg      Config
	log      *slog.Logger
	h        *compatool.Harness
	meta     storage.MetadataStore
	mw       *httpauth.Middleware
	authHint string
	importer importer
	sets     map[string]TaskSet
	setNames []string
	limiter  *limiter
	uploads  string
	closers  []func() error
	// owned caches (org, image ID) pairs an organisation has submitted.
	owned sync.Map
	// refs records which organisations use each image, so that erasure
	// removes an image no submission uses.
	refs *imageRefs

	accessLevel, probeLevel slog.Level
	handler                 http.Handler
	draining                atomic.Bool
	drained                 context.Context // done once Shutdown starts
	drain                   context.CancelFunc
	uploadSlots             chan struct{}
	server                  *http.Server
	stopOnce                sync.Once
	stopErr                 error
}

// New opens the configured backends, registers the example task sets and
// starts the harness: runs left queued by a previous process resume, runs
// left running are failed and their sandboxes reaped. Serve the result with
// [App.Serve] or [App.Handler] and stop it with [App.Shutdown].
func New(ctx context.Context, cfg Config) (_ *App, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: cfg.Logger, limiter: newLimiter(cfg.RatePerOrg, cfg.Burst), accessLevel: slog.LevelDebug, probeLevel: slog.LevelDebug,
		uploadSlots: make(chan struct{}, maxConcurrentUploads)}
	a.drained, a.drain = context.WithCancel(context.Background())
	if cfg.LogRequests {
		a.accessLevel = slog.LevelInfo
	}
	defer func() {
		if err != nil {
			a.drain()
			a.closeBackends()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("app: data directory: %w", err)
	}
	a.uploads = filepath.Join(cfg.DataDir, "uploads")
	// Uploads left by a process that died mid-upload are of no use.
	if err := os.RemoveAll(a.uploads); err != nil {
		return nil, fmt.Errorf("app: clear uploads: %w", err)
	}
	if err := os.Mkdir(a.uploads, 0o700); err != nil {
		return nil, fmt.Errorf("app: uploads directory: %w", err)
	}
	if a.refs, err = openImageRefs(cfg.DataDir); err != nil {
		return nil, err
	}
	keys, err := openKeys(cfg.KeyFile, a.log)
	if err != nil {
		return nil, err
	}
	b, err := openBackends(ctx, cfg, keys, a.log)
	a.closers = b.closers
	if err != nil {
		return nil, err
	}
	a.meta, a.importer, a.authHint = b.meta, b.importer, b.authHint
	if a.mw, err = httpauth.New(b.authn, &httpauth.Options{Realm: "compatool", Logger: a.log, OnError: a.authError}); err != nil {
		return nil, err
	}
	a.h, err = compatool.New(compatool.Options{
		Metadata:      b.meta,
		Transcripts:   b.transcripts,
		Sandbox:       b.sandbox,
		Keys:          keys,
		Meter:         membilling.New(),
		Environments:  map[string]compatool.Environment{notes.Name: notes.Environment{}},
		Workers:       cfg.Workers,
		Limits:        sandbox.Limits{Timeout: cfg.RunTimeout},
		RequireDigest: true,
		GatewayURL:    cfg.GatewayURL,
		Logger:        a.log,
	})
	if err != nil {
		return nil, err
	}
	if a.sets, err = registerTaskSets(ctx, a.h); err != nil {
		return nil, err
	}
	a.setNames = slices.Sorted(maps.Keys(a.sets))
	if err := a.h.Start(ctx); err != nil {
		return nil, err
	}
	a.finishReleases(ctx)
	a.handler = a.routes()
	a.server = &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.log.Info("compatool server started", "metadata", cfg.Metadata, "transcripts", cfg.Transcripts,
		"sandbox", cfg.Sandbox, "auth", cfg.Auth, "gateway", cfg.GatewayURL, "task_sets", strings.Join(a.setNames, ","))
	if cfg.Sandbox == SandboxMem {
		a.log.Warn("sandbox=mem runs every uploaded image as the built-in reference agent inside this process; it isolates nothing: use it for trials and load tests only")
	}
	return a, nil
}

// Handler returns the server's HTTP handler: the API, the probes and the
// MCP gateway.
func (a *App) Handler() http.Handler { return a.handler }

// Harness returns the harness the server drives.
func (a *App) Harness() *compatool.Harness { return a.h }

// TaskSets returns the task sets submissions may name.
func (a *App) TaskSets() []TaskSet {
	out := make([]TaskSet, len(a.setNames))
	for i, n := range a.setNames {
		out[i] = a.sets[n]
		out[i].Tasks = slices.Clone(out[i].Tasks)
	}
	return out
}

// Serve serves the handler on ln until [App.Shutdown]; it then returns nil.
func (a *App) Serve(ln net.Listener) error {
	if err := a.server.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server gracefully. It stops taking API requests
// (readyz turns 503), lets the runs in flight finish until ctx is done —
// then cancels them: their sandboxes are destroyed and they fail with an
// infrastructure reason — while the MCP gateway keeps serving them, then
// closes the HTTP server and the backends. Runs still queued stay queued
// for the next start. It is safe to call more than once.
func (a *App) Shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() {
		a.draining.Store(true)
		a.drain()
		a.log.Info("shutting down: finishing the runs in flight")
		err := a.h.Close(ctx)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			a.log.Warn("shutdown deadline passed: the runs in flight were cancelled and failed")
			err = nil
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := a.server.Shutdown(sctx); err != nil {
			a.log.Warn("requests still in flight were cut off", "err", err)
			a.server.Close()
		}
		a.stopErr = errors.Join(err, a.closeBackends())
		a.log.Info("shut down")
	})
	return a.stopErr
}

func (a *App) closeBackends() error {
	var errs []error
	for _, c := range slices.Backward(a.closers) {
		errs = append(errs, c())
	}
	a.closers = nil
	return errors.Join(errs...)
}

func imageKey(org auth.OrgID, image string) string { return string(org) + "\x00" + image }

// ownsImage reports whether the scope's organisation has a submission of
// image: an image ID is usable only by the organisation that uploaded it,
// so that knowing another organisation's image ID does not let one run
// their agent (P14).
func (a *App) ownsImage(ctx context.Context, s auth.Scope, image string) (bool, error) {
	key := imageKey(s.Org(), image)
	if _, ok := a.owned.Load(key); ok {
		return true, nil
	}
	ok, err := a.hasSubmissionOf(ctx, s, image)
	if ok {
		a.owned.Store(key, true)
	}
	return ok, err
}

// forgetImages drops the organisation's cached image ownership after an
// erasure: an image stays usable only while a submission of it remains.
func (a *App) forgetImages(org auth.OrgID) {
	prefix := string(org) + "\x00"
	a.owned.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			a.owned.Delete(k)
		}
		return true
	})
}
