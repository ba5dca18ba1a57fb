// Package devauth is an [auth.Authenticator] that both issues and verifies
// real signed JWTs (Ed25519, "alg": "EdDSA") in the shape of Clerk session
// tokens. It is for local use, tests and self-hosted deployments without
// Clerk; production deployments on Clerk use clerkauth. Both pass the
// conformance suite in authtest.
//
// It keeps promise P10 of DESIGN.md (short-lived JWTs only: every token must
// carry "iat" and "exp" at most [Options.MaxLifetime] apart) and the identity
// half of P11 and P12: the organisation comes only from the signed org claims,
// and staff status only from a configured claim or a configured role in the
// platform's own organisation, never from being an admin of some organisation.
//
// # Token shape
//
// Claims are those of a Clerk session token: "sub", "iss", "azp", "sid",
// "iat", "nbf", "exp", and the active organisation either in Clerk's v1 form
// (top-level "org_id", "org_role", "org_slug") or its v2 form ("v": 2 and
// "o": {"id", "rol", "slg"}, the role without its "org:" prefix). Both forms
// yield the same [auth.Principal]. The header carries "kid", the RFC 7638
// thumbprint of the public key, so [Authority.PublicJWKS] can be served as a
// Clerk-compatible JWKS.
//
// # Errors
//
// Every refusal of [Authority.Authenticate] wraps [auth.ErrUnauthenticated].
// Configuration mistakes in [New] and [Authority.Issue] are plain errors that
// say which field to fix.
package devauth

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/internal/claims"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Defaults and bounds of [Options]. The leeway (5s by default, at most 1m)
// and the maximum lifetime (10m by default, at most 1h) are clerkauth's too.
const (
	DefaultIssuer          = "urn:compatool:devauth"
	DefaultAuthorizedParty = "http://localhost"
	DefaultLeeway          = claims.DefaultLeeway
	DefaultMaxLifetime     = claims.DefaultMaxLifetime
	DefaultLifetime        = time.Minute // Clerk's session-token lifetime

	// MaxLeeway and MaxMaxLifetime bound the configuration: a larger clock
	// skew or token lifetime would no longer be "short-lived" (P10).
	MaxLeeway      = claims.MaxLeeway
	MaxMaxLifetime = claims.MaxMaxLifetime
)

// algorithms is the only list of signature algorithms the parser accepts, so
// "none", HMAC with the public key as secret (key confusion) and any other
// algorithm are refused before a signature is looked at.
var algorithms = []jose.SignatureAlgorithm{jose.EdDSA}

// Options configure an [Authority]. The zero value (or nil) selects the
// defaults documented on each field.
type Options struct {
	// Issuer is the exact "iss" every token must carry; DefaultIssuer when
	// empty. With Clerk it is the Frontend API URL.
	Issuer string
	// AuthorizedParties lists the accepted "azp" values (origins of the
	// front ends allowed to present tokens). A token without "azp" or with
	// one not listed is refused. Default: DefaultAuthorizedParty.
	AuthorizedParties []string
	// Leeway is the clock skew tolerated on "exp", "nbf" and "iat": zero
	// selects DefaultLeeway, a negative value none; at most MaxLeeway.
	Leeway time.Duration
	// MaxLifetime bounds "exp" − "iat"; zero selects DefaultMaxLifetime; at
	// most MaxMaxLifetime.
	MaxLifetime time.Duration
	// StaffClaim names a top-level claim that marks staff when it is the
	// JSON boolean true (with Clerk, a session-token claim filled from the
	// user's public metadata, which only the platform's backend can write).
	// Empty disables staff by claim.
	StaffClaim string
	// StaffRoles lists organisation roles (e.g. "org:staff") that mark staff,
	// but only in StaffOrg: an organisation's admin can grant any role
	// within their own organisation, so a role alone proves nothing.
	StaffRoles []string
	// StaffOrg is the platform's own organisation; required with StaffRoles.
	StaffOrg auth.OrgID
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Claims describe a token for [Authority.Issue].
type Claims struct {
	// Subject is the user id ("sub"); required.
	Subject string
	// Org is the active organisation; empty for a session without one.
	Org auth.OrgID
	// Role is the organisation role with its "org:" prefix; "org:member"
	// when empty and Org is set.
	Role string
	// OrgSlug is the organisation's slug; optional.
	OrgSlug string
	// Staff sets Options.StaffClaim to true; an error when no StaffClaim is
	// configured.
	Staff bool
	// SessionID is the "sid" claim; random when empty.
	SessionID string
	// AuthorizedParty is the "azp" claim; the first of
	// Options.AuthorizedParties when empty.
	AuthorizedParty string
	// Lifetime is "exp" − "iat"; DefaultLifetime when zero, at most
	// Options.MaxLifetime.
	Lifetime time.Duration
	// V2 selects Clerk's v2 organisation claims ("v": 2, "o": {…}) instead
	// of the v1 top-level ones.
	V2 bool
}

// Authority issues and verifies tokens signed by one Ed25519 key. It is safe
// for concurrent use and holds no state beyond its configuration.
type Authority struct {
	priv   ed25519.PrivateKey
	pub    ed25519.PublicKey
	kid    string
	jwks   []byte
	policy *claims.Policy
}

var _ auth.Authenticator = (*Authority)(nil)

// New returns an Authority that signs with key and accepts only tokens signed
// by it. opts may be nil.
func New(key ed25519.PrivateKey, opts *Options) (*Authority, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("devauth: private key is %d bytes, want %d; use ed25519.GenerateKey or Generate", len(key), ed25519.PrivateKeySize)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Issuer == "" {
		o.Issuer = DefaultIssuer
	}
	if len(o.AuthorizedParties) == 0 {
		o.AuthorizedParties = []string{DefaultAuthorizedParty}
	}
	policy, err := claims.NewPolicy(claims.Policy{
		Issuer:            o.Issuer,
		AuthorizedParties: o.AuthorizedParties,
		Leeway:            o.Leeway,
		MaxLifetime:       o.MaxLifetime,
		StaffClaim:        o.StaffClaim,
		StaffRoles:        o.StaffRoles,
		StaffOrg:          o.StaffOrg,
		Now:               o.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("devauth: %w", err)
	}
	a := &Authority{
		priv:   slices.Clone(key),
		pub:    slices.Clone(key.Public().(ed25519.PublicKey)),
		policy: policy,
	}
	jwk := jose.JSONWebKey{Key: a.pub, Algorithm: string(jose.EdDSA), Use: "sig"}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("devauth: key thumbprint: %w", err)
	}
	a.kid = base64.RawURLEncoding.EncodeToString(thumb)
	jwk.KeyID = a.kid
	if a.jwks, err = json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}}); err != nil {
		return nil, fmt.Errorf("devauth: encode JWKS: %w", err)
	}
	return a, nil
}

// Generate returns an Authority with a fresh random key. opts may be nil.
func Generate(opts *Options) (*Authority, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devauth: generate key: %w", err)
	}
	return New(key, opts)
}

// KeyID returns the "kid" of the Authority's key: its RFC 7638 thumbprint.
func (a *Authority) KeyID() string { return a.kid }

// PublicKey returns the verification key.
func (a *Authority) PublicKey() ed25519.PublicKey { return slices.Clone(a.pub) }

// PublicJWKS returns the JSON Web Key Set of the public key, as a
// Clerk-compatible JWKS endpoint serves it.
func (a *Authority) PublicJWKS() []byte { return slices.Clone(a.jwks) }

// Issue signs a token for c, valid from now for c.Lifetime.
func (a *Authority) Issue(c Claims) (string, error) {
	if err := claims.CheckText("Claims.Subject", c.Subject); err != nil {
		return "", fmt.Errorf("devauth: %w", err)
	}
	life := c.Lifetime
	if life == 0 {
		life = min(DefaultLifetime, a.policy.MaxLifetime)
	}
	if life < time.Second || life > a.policy.MaxLifetime {
		return "", fmt.Errorf("devauth: Claims.Lifetime %v is outside [1s, %v]; raise Options.MaxLifetime or shorten the token", life, a.policy.MaxLifetime)
	}
	azp := c.AuthorizedParty
	if azp == "" {
		azp = a.policy.AuthorizedParties[0]
	}
	if !a.policy.Accepts(azp) {
		return "", fmt.Errorf("devauth: Claims.AuthorizedParty %q is not in Options.AuthorizedParties", azp)
	}
	sid := c.SessionID
	if sid == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		sid = "sess_" + hex.EncodeToString(b[:])
	}
	iat := a.policy.Now().Unix()
	m := map[string]any{
		"sub": c.Subject, "iss": a.policy.Issuer, "azp": azp, "sid": sid,
		"iat": iat, "nbf": iat, "exp": iat + int64(life/time.Second),
	}
	if c.Org == "" && (c.Role != "" || c.OrgSlug != "") {
		return "", errors.New("devauth: Claims.Role and Claims.OrgSlug need Claims.Org")
	}
	if c.Org != "" {
		if err := claims.CheckText("Claims.Org", string(c.Org)); err != nil {
			return "", fmt.Errorf("devauth: %w", err)
		}
		role := c.Role
		if role == "" {
			role = "org:member"
		}
		short, ok := strings.CutPrefix(role, "org:")
		if !ok || short == "" {
			return "", fmt.Errorf("devauth: Claims.Role %q must look like \"org:admin\"", role)
		}
		if c.V2 {
			o := map[string]any{"id": c.Org, "rol": short}
			if c.OrgSlug != "" {
				o["slg"] = c.OrgSlug
			}
			m["o"] = o
		} else {
			m["org_id"], m["org_role"] = c.Org, role
			if c.OrgSlug != "" {
				m["org_slug"] = c.OrgSlug
			}
		}
	}
	if c.V2 {
		m["v"] = 2
	}
	if c.Staff {
		if a.policy.StaffClaim == "" {
			return "", errors.New("devauth: Claims.Staff needs Options.StaffClaim")
		}
		m[a.policy.StaffClaim] = true
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: a.priv},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", a.kid))
	if err != nil {
		return "", fmt.Errorf("devauth: signer: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(m).Serialize()
	if err != nil {
		return "", fmt.Errorf("devauth: sign: %w", err)
	}
	return tok, nil
}

// wireClaims are the claims Authenticate reads; unknown claims are ignored.
type wireClaims struct {
	jwt.Claims
	claims.Org
	AZP string `json:"azp"`
}

// Authenticate verifies token and returns its principal. It does no I/O and
// so never blocks on ctx.
func (a *Authority) Authenticate(_ context.Context, token string) (*auth.Principal, error) {
	if token == "" {
		return nil, refuse("empty token")
	}
	if len(token) > auth.MaxTokenBytes {
		return nil, refuse("token is %d bytes, over the limit of %d", len(token), auth.MaxTokenBytes)
	}
	tok, err := jwt.ParseSigned(token, algorithms)
	if err != nil {
		return nil, refuse("not an EdDSA-signed compact JWT: %v", err)
	}
	h := tok.Headers[0]
	if h.KeyID != a.kid {
		return nil, refuse("unknown key id %q", h.KeyID)
	}
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" {
		return nil, refuse("token type %v is not JWT", typ)
	}
	var c wireClaims
	var raw map[string]json.RawMessage
	if err := tok.Claims(a.pub, &c, &raw); err != nil {
		return nil, refuse("bad signature or claims: %v", err)
	}
	p, err := a.policy.Principal(claims.Registered{
		Subject:         c.Subject,
		Issuer:          c.Issuer,
		AuthorizedParty: c.AZP,
		IssuedAt:        (*int64)(c.IssuedAt),
		Expiry:          (*int64)(c.Expiry),
		NotBefore:       (*int64)(c.NotBefore),
	})
	if err != nil {
		return nil, refuse("%v", err)
	}
	if p.Org, p.Role, err = c.Org.Active(); err != nil {
		return nil, refuse("%v", err)
	}
	p.Staff = a.policy.Staff(p, raw)
	return p, nil
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: devauth: %s", auth.ErrUnauthenticated, fmt.Sprintf(format, args...))
}
