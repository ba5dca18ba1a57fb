// Command server is Compatool's reference server (package
// examples/server/app): an HTTP JSON API that takes agent images, runs them
// against task sets in sandboxes and serves results and redacted
// transcripts.
//
//	go run ./examples/server                 # serve with the embedded defaults
//	go run ./examples/server token -org acme # mint a local token
//
// With the embedded defaults everything lives in the data directory
// (-data): SQLite metadata, transcript files, the task-content key and the
// local token-signing key. Agents run in OCI containers, which needs root
// and runc (apt-get install runc); -sandbox=mem runs every image as the
// built-in reference agent instead, for trials without root. D1, R2 and
// Clerk are selected by flags alone (-metadata=d1, -transcripts=r2,
// -auth=clerk).
//
// Every flag can also be set by an environment variable: COMPATOOL_ and the
// flag's name in upper case with '-' as '_' (-max-upload is
// COMPATOOL_MAX_UPLOAD). Secrets are read from the environment only:
// COMPATOOL_D1_API_TOKEN, COMPATOOL_R2_SECRET_ACCESS_KEY and
// COMPATOOL_CLERK_SECRET_KEY.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/examples/server/app"
)

// gcPercent is the server's garbage-collection target unless GOGC is set.
// The MCP SDK allocates about 450 KB of short-lived decode buffers per tool
// call; at Go's default of 100 the collector, not the gateway, bounds the
// calls per second (measured: ~1,300-3,400/s at 100, ~10,000/s at 400 on 2
// cores; see BENCHMARKS.md).
const gcPercent = 400

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	args := os.Args[1:]
	var err error
	if len(args) > 0 && args[0] == "token" {
		err = token(args[1:], os.Stdout, os.Stderr)
	} else {
		err = serve(args, os.Stderr)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

// envPrefix starts the environment variable of every flag.
const envPrefix = "COMPATOOL_"

// parse sets fs's flags from the environment, then from args, so that the
// command line wins.
func parse(fs *flag.FlagSet, args []string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s: %w", name, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return fs.Parse(args)
}

func serve(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg app.Config
	addr := fs.String("addr", "127.0.0.1:8080", "the address to listen on (port 0 picks a free one)")
	fs.StringVar(&cfg.DataDir, "data", "compatool-data", "the data directory")
	fs.StringVar(&cfg.GatewayURL, "gateway-url", "", "the base URL at which sandboxes reach this server's MCP gateway (default http://<listen address>)")
	fs.StringVar(&cfg.Metadata, "metadata", app.MetadataSQLite, "metadata store: sqlite, d1 or mem")
	fs.StringVar(&cfg.Transcripts, "transcripts", app.TranscriptsFile, "transcript store: file, r2 or mem")
	fs.StringVar(&cfg.Sandbox, "sandbox", app.SandboxOCI, "sandbox: oci (needs root and runc) or mem (runs every image as the built-in reference agent, isolates nothing)")
	fs.StringVar(&cfg.Auth, "auth", app.AuthDev, "authenticator: dev (local tokens, see the token command) or clerk")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "the key file that seals task content (default <data>/task-keys.json, created if missing)")
	fs.IntVar(&cfg.Workers, "workers", 4, "runs executing at once")
	fs.DurationVar(&cfg.RunTimeout, "run-timeout", 2*time.Minute, "the deadline of each run")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body", 64<<10, "the largest JSON body, in bytes")
	fs.Int64Var(&cfg.MaxUploadBytes, "max-upload", 256<<20, "the largest image upload, in bytes")
	fs.Int64Var(&cfg.MaxImageBytes, "max-image", 1<<30, "the largest unpacked image, in bytes")
	fs.Float64Var(&cfg.RatePerOrg, "rate", 20, "requests per second each organisation may make")
	fs.IntVar(&cfg.Burst, "burst", 0, "requests an organisation may make at once (default 2×rate)")
	fs.StringVar(&cfg.StaffClaim, "staff-claim", "compatool_staff", "the token claim that marks platform staff")
	shutdown := fs.Duration("shutdown-timeout", 30*time.Second, "how long runs in flight may take to finish at shutdown before they are cancelled")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&cfg.LogRequests, "log-requests", false, "log every API request at info level")
	fs.StringVar(&cfg.OCI.Runtime, "oci-runtime", "runc", "OCI runtime: runc, crun or a path")
	fs.StringVar(&cfg.OCI.StateDir, "oci-state-dir", "", "state of running sandboxes (default /run/compatool/ocisandbox)")
	fs.StringVar(&cfg.OCI.CacheDir, "oci-cache-dir", "", "imported images (default <data>/images)")
	fs.StringVar(&cfg.D1.AccountID, "d1-account", "", "Cloudflare account id (-metadata=d1)")
	fs.StringVar(&cfg.D1.DatabaseID, "d1-database", "", "D1 database id (-metadata=d1)")
	fs.StringVar(&cfg.D1.BaseURL, "d1-base-url", "", "Cloudflare API base URL (default Cloudflare's)")
	fs.StringVar(&cfg.R2.Bucket, "r2-bucket", "", "bucket of the transcripts (-transcripts=r2)")
	fs.StringVar(&cfg.R2.Endpoint, "r2-endpoint", "", "S3 API endpoint, https://<account id>.r2.cloudflarestorage.com for R2")
	fs.StringVar(&cfg.R2.AccessKeyID, "r2-access-key-id", "", "access key id of the R2 API token")
	fs.StringVar(&cfg.R2.Region, "r2-region", "", "signing region (default auto)")
	fs.BoolVar(&cfg.R2.PathStyle, "r2-path-style", false, "put the bucket in the path (self-hosted S3 servers)")
	fs.StringVar(&cfg.R2.Prefix, "r2-prefix", "", "prefix of every key")
	fs.StringVar(&cfg.Clerk.Issuer, "clerk-issuer", "", "the Clerk instance's Frontend API URL (-auth=clerk)")
	parties := fs.String("clerk-authorized-parties", "", "comma-separated front-end origins allowed to present tokens")
	fs.StringVar(&cfg.Clerk.JWKSURL, "clerk-jwks-url", "", "JWKS URL (default <issuer>/.well-known/jwks.json)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; the only subcommand is token", fs.Arg(0))
	}
	cfg.D1.APIToken = os.Getenv(envPrefix + "D1_API_TOKEN")
	cfg.R2.SecretAccessKey = os.Getenv(envPrefix + "R2_SECRET_ACCESS_KEY")
	cfg.Clerk.SecretKey = os.Getenv(envPrefix + "CLERK_SECRET_KEY")
	if *parties != "" {
		cfg.Clerk.AuthorizedParties = strings.Split(*parties, ",")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	cfg.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if cfg.GatewayURL == "" {
		cfg.GatewayURL = "http://" + ln.Addr().String()
	}
	a, err := app.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	if cfg.Auth == app.AuthDev {
		log.Info("mint a local token with: go run ./examples/server token -data " + cfg.DataDir + " -org <org>")
	}
	select {
	case err = <-served:
	case <-ctx.Done():
	}
	stop() // a second signal kills the process
	sctx, cancel := context.WithTimeout(context.Background(), *shutdown)
	defer cancel()
	return errors.Join(err, a.Shutdown(sctx))
}

func token(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("server token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "compatool-data", "the server's data directory (its devauth.key signs the token)")
	var req app.TokenRequest
	org := fs.String("org", "", "the organisation the token acts for")
	fs.StringVar(&req.Subject, "sub", "user_local", "the user id")
	fs.StringVar(&req.Role, "role", "org:admin", "the organisation role")
	fs.BoolVar(&req.Staff, "staff", false, "mark the holder as platform staff")
	fs.DurationVar(&req.Lifetime, "ttl", 10*time.Minute, "the token's lifetime (at most 10m)")
	staffClaim := fs.String("staff-claim", "compatool_staff", "the token claim that marks staff (as the server's -staff-claim)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *org == "" && !req.Staff {
		return errors.New("token: -org is required: name the organisation the token acts for")
	}
	req.Org = auth.OrgID(*org)
	tok, err := app.MintToken(*data, *staffClaim, req)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
