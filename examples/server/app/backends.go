package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/clerkauth"
	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/d1store"
	"github.com/compatool/compatool/storage/envelope"
	"github.com/compatool/compatool/storage/filestore"
	"github.com/compatool/compatool/storage/memstore"
	"github.com/compatool/compatool/storage/r2store"
	"github.com/compatool/compatool/storage/sqlitestore"
)

// backends are the drivers a configuration selects.
type backends struct {
	meta        storage.MetadataStore
	transcripts storage.TranscriptStore
	sandbox     sandbox.Sandbox
	importer    importer
	authn       auth.Authenticator
	// authHint tells a client without a valid token how to get one.
	authHint string
	closers  []func() error
}

// openKeys loads the envelope key file, creating it (mode 0600) on first
// start.
func openKeys(path string, log *slog.Logger) (*envelope.Keyring, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := envelope.GenerateKeyFile(path); err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		log.Info("created the key that seals task content; back it up: sealed data cannot be read without it", "key_file", path)
	}
	p, err := envelope.LoadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	return envelope.NewKeyring(p), nil
}

func openBackends(ctx context.Context, cfg Config, keys *envelope.Keyring, log *slog.Logger) (b backends, err error) {
	var mem *memstore.Store
	memStore := func() *memstore.Store {
		if mem == nil {
			mem = memstore.New(nil)
		}
		return mem
	}
	switch cfg.Metadata {
	case MetadataSQLite:
		st, err := sqlitestore.Open(ctx, filepath.Join(cfg.DataDir, "compatool.db"), &sqlitestore.Options{Keyring: keys, Logger: log})
		if err != nil {
			return b, fmt.Errorf("app: %w", err)
		}
		b.meta = st
		b.closers = append(b.closers, st.Close)
	case MetadataD1:
		d := cfg.D1
		st, err := d1store.Open(ctx, d.AccountID, d.DatabaseID, d.APIToken, &d1store.Options{BaseURL: d.BaseURL, Keyring: keys, Logger: log})
		if err != nil {
			return b, fmt.Errorf("app: %w (set -d1-account, -d1-database and COMPATOOL_D1_API_TOKEN)", err)
		}
		b.meta = st
		b.closers = append(b.closers, st.Close)
	case MetadataMem:
		b.meta = memStore()
	default:
		return b, fmt.Errorf("app: unknown metadata backend %q; use %q, %q or %q", cfg.Metadata, MetadataSQLite, MetadataD1, MetadataMem)
	}
	switch cfg.Transcripts {
	case TranscriptsFile:
		st, err := filestore.Open(filepath.Join(cfg.DataDir, "transcripts"), &filestore.Options{Logger: log})
		if err != nil {
			return b, fmt.Errorf("app: %w", err)
		}
		b.transcripts = st
		b.closers = append(b.closers, st.Close)
	case TranscriptsR2:
		r := cfg.R2
		st, err := r2store.New(r.Bucket, &r2store.Options{
			Endpoint: r.Endpoint, AccessKeyID: r.AccessKeyID, SecretAccessKey: r.SecretAccessKey,
			Region: r.Region, UsePathStyle: r.PathStyle, Prefix: r.Prefix,
		})
		if err != nil {
			return b, fmt.Errorf("app: %w (set -r2-bucket, -r2-endpoint, -r2-access-key-id and COMPATOOL_R2_SECRET_ACCESS_KEY)", err)
		}
		b.transcripts = st
	case TranscriptsMem:
		b.transcripts = memStore()
	default:
		return b, fmt.Errorf("app: unknown transcripts backend %q; use %q, %q or %q", cfg.Transcripts, TranscriptsFile, TranscriptsR2, TranscriptsMem)
	}
	switch cfg.Sandbox {
	case SandboxOCI:
		o := cfg.OCI
		sb, err := ocisandbox.New(&ocisandbox.Options{Runtime: o.Runtime, StateDir: o.StateDir, CacheDir: o.CacheDir, MaxImageBytes: cfg.MaxImageBytes, Logger: log})
		if err != nil {
			return b, fmt.Errorf("app: %w; or start with -sandbox=mem for a trial that isolates nothing", err)
		}
		b.sandbox, b.importer = sb, sandboxImporter{sb}
		b.closers = append(b.closers, sb.Close)
	case SandboxMem:
		sb := memsandbox.New(nil, &memsandbox.Options{Logger: log})
		b.sandbox, b.importer = sb, memImporter{sb}
	default:
		return b, fmt.Errorf("app: unknown sandbox %q; use %q or %q", cfg.Sandbox, SandboxOCI, SandboxMem)
	}
	switch cfg.Auth {
	case AuthDev:
		a, err := DevAuthority(cfg.DataDir, cfg.StaffClaim)
		if err != nil {
			return b, err
		}
		b.authn = a
		b.authHint = "mint a local token with: go run ./examples/server token -data " + cfg.DataDir + " -org <your org>"
	case AuthClerk:
		c := cfg.Clerk
		a, err := clerkauth.New(c.Issuer, &clerkauth.Options{
			AuthorizedParties: c.AuthorizedParties, JWKSURL: c.JWKSURL, SecretKey: c.SecretKey,
			StaffClaim: cfg.StaffClaim, Logger: log,
		})
		if err != nil {
			return b, fmt.Errorf("app: %w", err)
		}
		b.authn = a
		b.authHint = "sign in with Clerk and send the session token (tokens live one minute: fetch a fresh one per request)"
	default:
		return b, fmt.Errorf("app: unknown auth backend %q; use %q or %q", cfg.Auth, AuthDev, AuthClerk)
	}
	return b, nil
}

// importError classifies a sandbox's refusal of the checked archive at file;
// the client's message names the archive, not the server's path.
func importError(err error, file string) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if errors.Is(err, sandbox.ErrImageNotFound) || errors.Is(err, ocisandbox.ErrImageTooLarge) || errors.Is(err, ocisandbox.ErrDigestMismatch) {
		msg := strings.TrimPrefix(err.Error(), sandbox.ErrImageNotFound.Error()+": ")
		return badImage("%s", strings.ReplaceAll(msg, file, "the uploaded archive"))
	}
	return fmt.Errorf("import image: %w", err)
}
