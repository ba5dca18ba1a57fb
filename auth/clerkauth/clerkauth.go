// Package clerkauth is an [auth.Authenticator] for Clerk session tokens. It
// verifies them with the Clerk Go SDK's jwt.Verify against keys from the
// instance's JSON Web Key Set, which it fetches and caches itself.
//
// It keeps promise P10 of DESIGN.md (only short-lived JWTs: every token must
// carry "iat" and "exp" at most [Options.MaxLifetime] apart, however validly
// signed) and the identity half of P11 and P12: the organisation comes only
// from the signed org claims, and staff status only from a configured claim
// or a configured role in the platform's own organisation. Its options and
// its answers are those of devauth, and both pass the conformance suite in
// authtest.
//
// # What is checked
//
// A token is refused unless it is a compact JWS of at most
// [auth.MaxTokenBytes] bytes, signed with RS256 (what Clerk uses) or EdDSA —
// no other algorithm, "none" and HMAC included — by a key of the JWKS whose
// "kid" the header names and whose algorithm matches; its "iss" is exactly
// the configured issuer; its "azp" is one of [Options.AuthorizedParties];
// "sub", "iat" and "exp" are present; "exp", "nbf" and "iat" hold within
// [Options.Leeway]; "exp" − "iat" is at most [Options.MaxLifetime]; the
// organisation claims are well formed in Clerk's v1 form ("org_id",
// "org_role") or v2 form ("v": 2, "o": {"id", "rol"}); and the session
// status "sts", when present, is "active" (a "pending" session is treated as
// signed out, as Clerk's SDKs do).
//
// # Keys
//
// The SDK's jwt.Verify would fetch the key set on every call; this package
// keeps it in memory instead. A token whose "kid" is not in the cached set
// triggers a fetch, but at most one per [Options.RefreshInterval]: a flood
// of tokens with made-up key ids costs the JWKS endpoint nothing. A set older
// than [Options.MaxKeyAge] is refetched in the background while the cached
// keys stay in use, so a rotated-out key disappears and an unreachable
// endpoint does not lock everyone out. Responses are bounded by
// [MaxJWKSBytes] and [Options.FetchTimeout]. Only the configured JWKS URL is
// ever called (P15).
//
// # Errors
//
// Every refusal of [Authenticator.Authenticate] wraps [auth.ErrUnauthenticated],
// including a token that cannot be checked because the key set cannot be
// fetched. Configuration mistakes in [New] are plain errors that say which
// field to fix. Tokens never appear in errors or logs.
package clerkauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/clerk/clerk-sdk-go/v2/jwt"
	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/internal/claims"
)

// Defaults and bounds of [Options]. The leeway (5s by default, at most 1m)
// and the maximum lifetime (10m by default, at most 1h) are devauth's too.
const (
	DefaultLeeway          = claims.DefaultLeeway
	DefaultMaxLifetime     = claims.DefaultMaxLifetime
	DefaultRefreshInterval = 30 * time.Second
	DefaultMaxKeyAge       = time.Hour
	DefaultFetchTimeout    = 10 * time.Second

	// MaxLeeway and MaxMaxLifetime bound the configuration: a larger clock
	// skew or token lifetime would no longer be "short-lived" (P10).
	MaxLeeway      = claims.MaxLeeway
	MaxMaxLifetime = claims.MaxMaxLifetime
	// MinRefreshInterval keeps the unknown-kid rate limit meaningful.
	MinRefreshInterval = time.Second
)

// MaxJWKSBytes bounds a JWKS response; Clerk's is about 1 KiB.
const MaxJWKSBytes = 64 << 10

// Options configure an [Authenticator]. Fields mirror devauth.Options so that
// a deployment can switch between the two without changing behaviour.
type Options struct {
	// AuthorizedParties lists the accepted "azp" values (origins of the
	// front ends allowed to present tokens); required. A token without
	// "azp" or with one not listed is refused.
	AuthorizedParties []string
	// JWKSURL is where the key set is fetched: https only, or http to a
	// loopback address. Default: the issuer followed by
	// "/.well-known/jwks.json", Clerk's Frontend API endpoint. Clerk's
	// Backend API endpoint "https://api.clerk.com/v1/jwks" works too, with
	// SecretKey.
	JWKSURL string
	// SecretKey, when set, is sent as "Authorization: Bearer <key>" with
	// every JWKS request, as Clerk's Backend API requires. It is sent
	// nowhere else and never logged.
	SecretKey string
	// HTTPClient fetches the key set. Default: a client that follows no
	// redirects; a client passed here keeps its own redirect policy.
	// Requests are bounded by FetchTimeout either way.
	HTTPClient *http.Client
	// Leeway is the clock skew tolerated on "exp", "nbf" and "iat": zero
	// selects DefaultLeeway, a negative value none; at most MaxLeeway.
	Leeway time.Duration
	// MaxLifetime bounds "exp" − "iat"; zero selects DefaultMaxLifetime; at
	// most MaxMaxLifetime. Clerk's session tokens live one minute.
	MaxLifetime time.Duration
	// RefreshInterval is the least time between two fetches of the key set
	// (the first is made on the first token, or by [Authenticator.Refresh]).
	// Zero selects DefaultRefreshInterval; at least MinRefreshInterval.
	RefreshInterval time.Duration
	// MaxKeyAge is how long a fetched key set is used before it is
	// refetched in the background; zero selects DefaultMaxKeyAge; at least
	// RefreshInterval.
	MaxKeyAge time.Duration
	// FetchTimeout bounds one fetch of the key set; zero selects
	// DefaultFetchTimeout.
	FetchTimeout time.Duration
	// StaffClaim names a top-level claim that marks staff when it is the
	// JSON boolean true: a session-token claim filled from the user's
	// public metadata, which only the platform's backend can write. Empty
	// disables staff by claim.
	StaffClaim string
	// StaffRoles lists organisation roles (e.g. "org:staff") that mark staff,
	// but only in StaffOrg: an organisation's admin can grant any role
	// within their own organisation, so a role alone proves nothing.
	StaffRoles []string
	// StaffOrg is the platform's own organisation; required with StaffRoles.
	StaffOrg auth.OrgID
	// Now is the clock, for token times and the refresh schedule; time.Now
	// when nil.
	Now func() time.Time
	// Logger receives failed key-set fetches; nil discards them.
	Logger *slog.Logger
}

// Authenticator verifies Clerk session tokens of one Clerk instance. It is
// safe for concurrent use; its only state is the cached key set.
type Authenticator struct {
	policy *claims.Policy
	clock  clock
	keys   *keyCache
}

var _ auth.Authenticator = (*Authenticator)(nil)

// clock adapts Options.Now to clerk.Clock.
type clock func() time.Time

func (c clock) Now() time.Time { return c() }

// New returns an Authenticator for the Clerk instance whose tokens carry
// issuer as "iss": the instance's Frontend API URL, such as
// "https://clerk.example.com" or "https://verb-noun-42.clerk.accounts.dev".
// It makes no network call; the key set is fetched on first use or by
// [Authenticator.Refresh].
func New(issuer string, opts *Options) (*Authenticator, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if issuer == "" || strings.TrimSpace(issuer) != issuer {
		return nil, errors.New("clerkauth: issuer is empty or padded; pass the Frontend API URL of the Clerk instance, e.g. \"https://clerk.example.com\"")
	}
	policy, err := claims.NewPolicy(claims.Policy{
		Issuer:            issuer,
		AuthorizedParties: o.AuthorizedParties,
		Leeway:            o.Leeway,
		MaxLifetime:       o.MaxLifetime,
		StaffClaim:        o.StaffClaim,
		StaffRoles:        o.StaffRoles,
		StaffOrg:          o.StaffOrg,
		Now:               o.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("clerkauth: %w", err)
	}
	a := &Authenticator{policy: policy, clock: clock(policy.Now)}

	jwksURL := o.JWKSURL
	if jwksURL == "" {
		jwksURL = strings.TrimSuffix(issuer, "/") + "/.well-known/jwks.json"
	}
	if err := checkURL(jwksURL); err != nil {
		return nil, err
	}
	c := &keyCache{
		url:      jwksURL,
		secret:   o.SecretKey,
		client:   o.HTTPClient,
		interval: o.RefreshInterval,
		maxAge:   o.MaxKeyAge,
		timeout:  o.FetchTimeout,
		now:      policy.Now,
		log:      o.Logger,
	}
	if c.client == nil {
		c.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if c.interval == 0 {
		c.interval = DefaultRefreshInterval
	}
	if c.interval < MinRefreshInterval {
		return nil, fmt.Errorf("clerkauth: Options.RefreshInterval %v is under %v; it is what stops unknown key ids from hammering the JWKS endpoint", c.interval, MinRefreshInterval)
	}
	if c.maxAge == 0 {
		c.maxAge = max(DefaultMaxKeyAge, c.interval)
	}
	if c.maxAge < c.interval {
		return nil, fmt.Errorf("clerkauth: Options.MaxKeyAge %v is under Options.RefreshInterval %v", c.maxAge, c.interval)
	}
	if c.timeout == 0 {
		c.timeout = DefaultFetchTimeout
	}
	if c.timeout < 0 {
		return nil, fmt.Errorf("clerkauth: Options.FetchTimeout %v is negative", c.timeout)
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	a.keys = c
	return a, nil
}

// checkURL accepts https URLs, and http ones to a loopback host (a local
// JWKS server); anything else would let the key set be swapped in transit.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("clerkauth: JWKS URL %q is not an absolute URL without credentials; set Options.JWKSURL", s)
	}
	if u.Scheme == "https" {
		return nil
	}
	host := u.Hostname()
	ip := net.ParseIP(host)
	if u.Scheme == "http" && (host == "localhost" || ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("clerkauth: JWKS URL %q must use https (http only to a loopback host)", s)
}

// Refresh fetches the key set now, whatever the refresh schedule, and
// reports whether that worked. Hosts call it at start-up to warm the cache
// and to find a wrong JWKS URL or secret key before the first request does.
func (a *Authenticator) Refresh(ctx context.Context) error {
	f, _ := a.keys.start(true)
	return a.keys.wait(ctx, f)
}

// header is the part of the JOSE header read before the SDK parses the
// token: enough to refuse it cheaply and to pick the key.
type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  *string         `json:"typ"`
	Crit json.RawMessage `json:"crit"`
}

// Authenticate verifies token and returns its principal. It blocks only to
// fetch the key set, for a key id not in the cache, and then honours ctx.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (*auth.Principal, error) {
	if token == "" {
		return nil, refuse("empty token")
	}
	if len(token) > auth.MaxTokenBytes {
		return nil, refuse("token is %d bytes, over the limit of %d", len(token), auth.MaxTokenBytes)
	}
	h, err := parseHeader(token)
	if err != nil {
		return nil, refuse("%v", err)
	}
	switch {
	case h.Alg != "RS256" && h.Alg != "EdDSA":
		return nil, refuse("algorithm %q is not RS256 or EdDSA", h.Alg)
	case h.Typ != nil && *h.Typ != "JWT":
		return nil, refuse("token type %q is not JWT", *h.Typ)
	case h.Crit != nil:
		return nil, refuse("critical header extensions are not supported")
	case h.Kid == "" || len(h.Kid) > claims.MaxTextBytes:
		return nil, refuse("key id missing or longer than %d bytes", claims.MaxTextBytes)
	}
	key, err := a.keys.lookup(ctx, h.Kid)
	if err != nil {
		return nil, fmt.Errorf("%w: clerkauth: %w", auth.ErrUnauthenticated, err)
	}
	if key.Algorithm != h.Alg {
		return nil, refuse("token signed with %s but key %q is for %s", h.Alg, h.Kid, key.Algorithm)
	}

	var raw map[string]json.RawMessage
	c, err := jwt.Verify(ctx, &jwt.VerifyParams{
		Token:                   token,
		JWK:                     key,
		Clock:                   a.clock,
		Leeway:                  a.policy.Leeway,
		ProxyURL:                &a.policy.Issuer, // pins "iss" to exactly the issuer
		AuthorizedPartyHandler:  a.policy.Accepts,
		CustomClaimsConstructor: func(context.Context) any { return &raw },
	})
	if err != nil {
		return nil, refuse("%v", err)
	}
	// jwt.Verify has checked signature, issuer, azp and the dates it finds;
	// the rest of the contract (dates required, lifetime, org claims) is
	// ours, and the issuer and azp are checked again so that a change in the
	// SDK's rules cannot widen them.
	p, err := a.policy.Principal(claims.Registered{
		Subject:         c.Subject,
		Issuer:          c.Issuer,
		AuthorizedParty: c.AuthorizedParty,
		IssuedAt:        c.IssuedAt,
		Expiry:          c.Expiry,
		NotBefore:       c.NotBefore,
	})
	if err != nil {
		return nil, refuse("%v", err)
	}
	// The raw claims, not the SDK's: it folds v2 into the v1 fields and
	// treats any version other than 2 as 1.
	org, err := claims.DecodeOrg(raw)
	if err == nil {
		p.Org, p.Role, err = org.Active()
	}
	if err != nil {
		return nil, refuse("%v", err)
	}
	// Clerk marks a session with tasks left (such as choosing an
	// organisation) "pending"; like Clerk's own SDKs, treat it as signed out.
	if sts, ok := raw["sts"]; ok && !bytes.Equal(sts, []byte(`"active"`)) {
		return nil, refuse(`session status is not "active"`)
	}
	p.Staff = a.policy.Staff(p, raw)
	return p, nil
}

// parseHeader decodes the JOSE header of a compact JWS. Only the base64url
// alphabet is allowed, which also rules out the JSON serialization the
// underlying parser would otherwise accept.
func parseHeader(token string) (header, error) {
	var h header
	for i := range len(token) {
		c := token[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return h, errors.New("not a compact JWT: character outside base64url")
		}
	}
	seg, rest, _ := strings.Cut(token, ".")
	if strings.Count(rest, ".") != 1 {
		return h, errors.New("not a compact JWT: want three segments")
	}
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return h, fmt.Errorf("header: %v", err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("header: %v", err)
	}
	return h, nil
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: clerkauth: %s", auth.ErrUnauthenticated, fmt.Sprintf(format, args...))
}
