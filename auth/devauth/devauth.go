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
	"bytes"
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
	"unicode"
	"unicode/utf8"

	"github.com/compatool/compatool/auth"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Defaults and bounds of [Options].
const (
	DefaultIssuer          = "urn:compatool:devauth"
	DefaultAuthorizedParty = "http://localhost"
	DefaultLeeway          = 5 * time.Second
	DefaultMaxLifetime     = 10 * time.Minute
	DefaultLifetime        = time.Minute // Clerk's session-token lifetime

	// MaxLeeway and MaxMaxLifetime bound the configuration: a larger clock
	// skew or token lifetime would no longer be "short-lived" (P10).
	MaxLeeway      = time.Minute
	MaxMaxLifetime = time.Hour
)

// maxClaimBytes bounds every identifier taken from a token (subject,
// organisation id, role, slug), well above Clerk's ids.
const maxClaimBytes = 256

// algorithms is the only list of signature algorithms the parser accepts, so
// "none", HMAC with the public key as secret (key confusion) and any other
// algorithm are refused before a signature is looked at.
var algorithms = []jose.SignatureAlgorithm{jose.EdDSA}

// reservedClaims may not be used as Options.StaffClaim: they carry identity
// or session data that a staff flag must not be confused with.
var reservedClaims = []string{
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "sid", "v", "o",
	"org_id", "org_role", "org_slug", "org_permissions", "act", "fva", "fea",
}

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
	priv       ed25519.PrivateKey
	pub        ed25519.PublicKey
	kid        string
	jwks       []byte
	issuer     string
	parties    []string
	leeway     time.Duration
	maxLife    time.Duration
	staffClaim string
	staffRoles []string
	staffOrg   auth.OrgID
	now        func() time.Time
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
	a := &Authority{
		priv:       slices.Clone(key),
		pub:        slices.Clone(key.Public().(ed25519.PublicKey)),
		issuer:     o.Issuer,
		parties:    slices.Clone(o.AuthorizedParties),
		leeway:     o.Leeway,
		maxLife:    o.MaxLifetime,
		staffClaim: o.StaffClaim,
		staffRoles: slices.Clone(o.StaffRoles),
		staffOrg:   o.StaffOrg,
		now:        o.Now,
	}
	if a.issuer == "" {
		a.issuer = DefaultIssuer
	}
	if len(a.parties) == 0 {
		a.parties = []string{DefaultAuthorizedParty}
	}
	if slices.Contains(a.parties, "") {
		return nil, errors.New("devauth: Options.AuthorizedParties contains an empty entry; list front-end origins such as \"https://app.example.com\"")
	}
	switch {
	case a.leeway == 0:
		a.leeway = DefaultLeeway
	case a.leeway < 0:
		a.leeway = 0
	case a.leeway > MaxLeeway:
		return nil, fmt.Errorf("devauth: Options.Leeway %v exceeds %v; fix the clocks rather than widening the leeway", a.leeway, MaxLeeway)
	}
	switch {
	case a.maxLife == 0:
		a.maxLife = DefaultMaxLifetime
	case a.maxLife < time.Second || a.maxLife > MaxMaxLifetime:
		return nil, fmt.Errorf("devauth: Options.MaxLifetime %v is outside [1s, %v]; tokens must be short-lived (P10)", a.maxLife, MaxMaxLifetime)
	}
	if slices.Contains(reservedClaims, a.staffClaim) {
		return nil, fmt.Errorf("devauth: Options.StaffClaim %q is a registered or Clerk claim; name a custom claim such as \"staff\"", a.staffClaim)
	}
	if len(a.staffRoles) > 0 && a.staffOrg == "" {
		return nil, errors.New("devauth: Options.StaffRoles needs Options.StaffOrg: any organisation admin can grant a role within their own organisation")
	}
	if a.now == nil {
		a.now = time.Now
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
	if err := checkText("Claims.Subject", c.Subject); err != nil {
		return "", fmt.Errorf("devauth: %w", err)
	}
	life := c.Lifetime
	if life == 0 {
		life = min(DefaultLifetime, a.maxLife)
	}
	if life < time.Second || life > a.maxLife {
		return "", fmt.Errorf("devauth: Claims.Lifetime %v is outside [1s, %v]; raise Options.MaxLifetime or shorten the token", life, a.maxLife)
	}
	azp := c.AuthorizedParty
	if azp == "" {
		azp = a.parties[0]
	}
	if !slices.Contains(a.parties, azp) {
		return "", fmt.Errorf("devauth: Claims.AuthorizedParty %q is not in Options.AuthorizedParties", azp)
	}
	sid := c.SessionID
	if sid == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		sid = "sess_" + hex.EncodeToString(b[:])
	}
	iat := a.now().Unix()
	m := map[string]any{
		"sub": c.Subject, "iss": a.issuer, "azp": azp, "sid": sid,
		"iat": iat, "nbf": iat, "exp": iat + int64(life/time.Second),
	}
	if c.Org == "" && (c.Role != "" || c.OrgSlug != "") {
		return "", errors.New("devauth: Claims.Role and Claims.OrgSlug need Claims.Org")
	}
	if c.Org != "" {
		if err := checkText("Claims.Org", string(c.Org)); err != nil {
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
		if a.staffClaim == "" {
			return "", errors.New("devauth: Claims.Staff needs Options.StaffClaim")
		}
		m[a.staffClaim] = true
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
	AZP     string `json:"azp"`
	V       int    `json:"v"`
	OrgID   string `json:"org_id"`
	OrgRole string `json:"org_role"`
	OrgSlug string `json:"org_slug"`
	O       *orgV2 `json:"o"`
}

type orgV2 struct {
	ID   string `json:"id"`
	Role string `json:"rol"`
	Slug string `json:"slg"`
}

// maxUnix bounds numeric dates so that arithmetic on them cannot overflow
// (year 5138).
const maxUnix = 1e11

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

	if err := checkText("sub", c.Subject); err != nil {
		return nil, refuse("%v", err)
	}
	if c.Issuer != a.issuer {
		return nil, refuse("issuer %q is not %q", c.Issuer, a.issuer)
	}
	if c.AZP == "" || !slices.Contains(a.parties, c.AZP) {
		return nil, refuse("authorized party %q is not accepted", c.AZP)
	}
	if c.IssuedAt == nil || c.Expiry == nil {
		return nil, refuse("iat and exp are required")
	}
	iat, exp := int64(*c.IssuedAt), int64(*c.Expiry)
	if iat <= 0 || exp <= 0 || iat > maxUnix || exp > maxUnix {
		return nil, refuse("iat or exp out of range")
	}
	now := a.now()
	switch {
	case now.Add(-a.leeway).After(time.Unix(exp, 0)):
		return nil, refuse("token expired at %s", time.Unix(exp, 0).UTC().Format(time.RFC3339))
	case now.Add(a.leeway).Before(time.Unix(iat, 0)):
		return nil, refuse("token issued in the future")
	case c.NotBefore != nil && now.Add(a.leeway).Before(c.NotBefore.Time()):
		return nil, refuse("token not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339))
	case exp <= iat:
		return nil, refuse("token expires before it is issued")
	case time.Duration(exp-iat)*time.Second > a.maxLife:
		return nil, refuse("token lifetime %v exceeds %v", time.Duration(exp-iat)*time.Second, a.maxLife)
	}

	p := &auth.Principal{
		Subject:   c.Subject,
		IssuedAt:  time.Unix(iat, 0).UTC(),
		ExpiresAt: time.Unix(exp, 0).UTC(),
	}
	if p.Org, p.Role, err = organisation(&c); err != nil {
		return nil, refuse("%v", err)
	}
	if a.staffClaim != "" && bytes.Equal(raw[a.staffClaim], []byte("true")) {
		p.Staff = true
	}
	if a.staffOrg != "" && p.Org == a.staffOrg && slices.Contains(a.staffRoles, p.Role) {
		p.Staff = true
	}
	return p, nil
}

// organisation reads the active organisation from Clerk's v1 or v2 claims,
// refusing a token that carries both forms or only half of one.
func organisation(c *wireClaims) (auth.OrgID, string, error) {
	v1 := c.OrgID != "" || c.OrgRole != "" || c.OrgSlug != ""
	switch c.V {
	case 0, 1:
		if c.O != nil {
			return "", "", errors.New(`v1 token carries the v2 "o" claim`)
		}
		if !v1 {
			return "", "", nil
		}
		if c.OrgID == "" || c.OrgRole == "" {
			return "", "", errors.New("org_id and org_role must come together")
		}
		if err := checkText("org_id", c.OrgID); err != nil {
			return "", "", err
		}
		return auth.OrgID(c.OrgID), c.OrgRole, checkText("org_role", c.OrgRole)
	case 2:
		if v1 {
			return "", "", errors.New("v2 token carries v1 org claims")
		}
		if c.O == nil {
			return "", "", nil
		}
		if c.O.ID == "" || c.O.Role == "" {
			return "", "", errors.New(`"o" needs "id" and "rol"`)
		}
		if err := checkText("o.id", c.O.ID); err != nil {
			return "", "", err
		}
		role := "org:" + c.O.Role
		return auth.OrgID(c.O.ID), role, checkText("o.rol", role)
	default:
		return "", "", fmt.Errorf("unknown claims version %d", c.V)
	}
}

// checkText refuses empty, oversized or non-printable identifiers: they end up
// in storage keys and audit records.
func checkText(name, s string) error {
	if s == "" || len(s) > maxClaimBytes || !utf8.ValidString(s) ||
		strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return fmt.Errorf("%s must be 1 to %d bytes of printable UTF-8", name, maxClaimBytes)
	}
	return nil
}

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: devauth: %s", auth.ErrUnauthenticated, fmt.Sprintf(format, args...))
}
