// Package claims holds the token rules that devauth and clerkauth share, so
// that the two drivers give the same answer for the same token: the checked
// configuration ([Policy]), the registered claims ("sub", "iss", "azp",
// "iat", "exp", "nbf" with a leeway and a maximum lifetime), Clerk's v1 and
// v2 organisation claims ([Org]), identifier checks ([CheckText]) and the
// staff rule ([Policy.Staff]). Signature checks and key handling stay in the
// drivers.
//
// It keeps promise P10 of DESIGN.md (short-lived tokens only) and the
// identity half of P11 and P12 (the organisation only from the signed org
// claims; staff only from a configured claim or a configured role in the
// platform's own organisation).
//
// # Errors
//
// Errors name the claim or the Options field at fault but not the driver and
// never the token: drivers prefix their name, and wrap refusals of a token
// in [auth.ErrUnauthenticated].
package claims

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/compatool/compatool/auth"
)

// Defaults and bounds of the drivers' Options.
const (
	DefaultLeeway      = 5 * time.Second
	DefaultMaxLifetime = 10 * time.Minute

	// MaxLeeway and MaxMaxLifetime bound the configuration: a larger clock
	// skew or token lifetime would no longer be "short-lived" (P10).
	MaxLeeway      = time.Minute
	MaxMaxLifetime = time.Hour
)

// MaxTextBytes bounds every identifier taken from a token (subject,
// organisation id, role, key id), well above Clerk's ids.
const MaxTextBytes = 256

// maxUnix bounds numeric dates so that arithmetic on them cannot overflow
// (year 5138).
const maxUnix = 1e11

// reservedClaims may not be used as Policy.StaffClaim: they carry identity
// or session data that a staff flag must not be confused with.
var reservedClaims = []string{
	"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "azp", "sid", "v", "o",
	"org_id", "org_role", "org_slug", "org_permissions", "act", "fva", "fea",
}

// Policy is what a token must satisfy beyond its signature. Its fields mean
// what the drivers' Options fields of the same names document. Build it with
// [NewPolicy]; it is read-only afterwards and so safe for concurrent use.
type Policy struct {
	Issuer            string
	AuthorizedParties []string
	Leeway            time.Duration
	MaxLifetime       time.Duration
	StaffClaim        string
	StaffRoles        []string
	StaffOrg          auth.OrgID
	Now               func() time.Time
}

// NewPolicy returns a copy of o with the defaults applied (Leeway,
// MaxLifetime, Now) and its slices cloned, or an error naming the Options
// field to fix. Issuer and AuthorizedParties have no default here: each
// driver has its own.
func NewPolicy(o Policy) (*Policy, error) {
	p := o
	p.AuthorizedParties = slices.Clone(o.AuthorizedParties)
	p.StaffRoles = slices.Clone(o.StaffRoles)
	if p.Issuer == "" {
		return nil, errors.New("the issuer is empty; set it to the exact \"iss\" of the tokens")
	}
	if len(p.AuthorizedParties) == 0 || slices.Contains(p.AuthorizedParties, "") {
		return nil, errors.New("Options.AuthorizedParties is empty or has an empty entry; list front-end origins such as \"https://app.example.com\"")
	}
	switch {
	case p.Leeway == 0:
		p.Leeway = DefaultLeeway
	case p.Leeway < 0:
		p.Leeway = 0
	case p.Leeway > MaxLeeway:
		return nil, fmt.Errorf("Options.Leeway %v exceeds %v; fix the clocks rather than widening the leeway", p.Leeway, MaxLeeway)
	}
	switch {
	case p.MaxLifetime == 0:
		p.MaxLifetime = DefaultMaxLifetime
	case p.MaxLifetime < time.Second || p.MaxLifetime > MaxMaxLifetime:
		return nil, fmt.Errorf("Options.MaxLifetime %v is outside [1s, %v]; tokens must be short-lived (P10)", p.MaxLifetime, MaxMaxLifetime)
	}
	if slices.Contains(reservedClaims, p.StaffClaim) {
		return nil, fmt.Errorf("Options.StaffClaim %q is a registered or Clerk claim; name a custom claim such as \"staff\"", p.StaffClaim)
	}
	if len(p.StaffRoles) > 0 && p.StaffOrg == "" {
		return nil, errors.New("Options.StaffRoles needs Options.StaffOrg: any organisation admin can grant a role within their own organisation")
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	return &p, nil
}

// Registered holds the registered claims of a token whose signature the
// driver has verified. A nil date is an absent claim.
type Registered struct {
	Subject, Issuer, AuthorizedParty string
	IssuedAt, Expiry, NotBefore      *int64
}

// Principal checks r against p and returns the principal it names, with
// Subject, IssuedAt and ExpiresAt set; the organisation and the staff flag
// are for [Org.Active] and [Policy.Staff]. "iat" and "exp" are required,
// "nbf" is optional, and all three hold within p.Leeway of p.Now.
func (p *Policy) Principal(r Registered) (*auth.Principal, error) {
	if err := CheckText("sub", r.Subject); err != nil {
		return nil, err
	}
	if r.Issuer != p.Issuer {
		return nil, fmt.Errorf("issuer %q is not %q", r.Issuer, p.Issuer)
	}
	if !p.Accepts(r.AuthorizedParty) {
		return nil, fmt.Errorf("authorized party %q is not accepted", r.AuthorizedParty)
	}
	if r.IssuedAt == nil || r.Expiry == nil {
		return nil, errors.New("iat and exp are required")
	}
	iat, exp := *r.IssuedAt, *r.Expiry
	if iat <= 0 || exp <= 0 || iat > maxUnix || exp > maxUnix {
		return nil, errors.New("iat or exp out of range")
	}
	now := p.Now()
	switch {
	case now.Add(-p.Leeway).After(time.Unix(exp, 0)):
		return nil, fmt.Errorf("token expired at %s", time.Unix(exp, 0).UTC().Format(time.RFC3339))
	case now.Add(p.Leeway).Before(time.Unix(iat, 0)):
		return nil, errors.New("token issued in the future")
	case r.NotBefore != nil && now.Add(p.Leeway).Before(time.Unix(*r.NotBefore, 0)):
		return nil, fmt.Errorf("token not valid before %s", time.Unix(*r.NotBefore, 0).UTC().Format(time.RFC3339))
	case exp <= iat:
		return nil, errors.New("token expires before it is issued")
	case time.Duration(exp-iat)*time.Second > p.MaxLifetime:
		return nil, fmt.Errorf("token lifetime %v exceeds %v", time.Duration(exp-iat)*time.Second, p.MaxLifetime)
	}
	return &auth.Principal{
		Subject:   r.Subject,
		IssuedAt:  time.Unix(iat, 0).UTC(),
		ExpiresAt: time.Unix(exp, 0).UTC(),
	}, nil
}

// Accepts reports whether azp is one of the authorized parties; an empty
// "azp" never is.
func (p *Policy) Accepts(azp string) bool {
	return azp != "" && slices.Contains(p.AuthorizedParties, azp)
}

// Staff reports whether the staff rule marks the principal pr, whose Org and
// Role are set, as staff: the token's StaffClaim is the JSON boolean true, or
// its organisation is StaffOrg and its role one of StaffRoles. Being an admin
// of some organisation never makes staff. raw holds the token's claims.
func (p *Policy) Staff(pr *auth.Principal, raw map[string]json.RawMessage) bool {
	if p.StaffClaim != "" && bytes.Equal(raw[p.StaffClaim], []byte("true")) {
		return true
	}
	return p.StaffOrg != "" && pr.Org == p.StaffOrg && slices.Contains(p.StaffRoles, pr.Role)
}

// Org holds Clerk's organisation claims in both forms: v1 ("org_id",
// "org_role", "org_slug") and v2 ("v": 2, "o"). Decoding a token's claims
// into a struct that embeds Org fills it; [DecodeOrg] reads it from raw
// claims.
type Org struct {
	V    int    `json:"v"`
	ID   string `json:"org_id"`
	Role string `json:"org_role"`
	Slug string `json:"org_slug"`
	O    *OrgV2 `json:"o"`
}

// OrgV2 is Clerk's v2 organisation claim "o"; its role has no "org:" prefix.
type OrgV2 struct {
	ID   string `json:"id"`
	Role string `json:"rol"`
	Slug string `json:"slg"`
}

// DecodeOrg reads the organisation claims from a token's raw claims by their
// exact names, saying which claim has the wrong JSON type.
func DecodeOrg(raw map[string]json.RawMessage) (Org, error) {
	var o Org
	for _, c := range []struct {
		name string
		dst  any
	}{{"v", &o.V}, {"org_id", &o.ID}, {"org_role", &o.Role}, {"org_slug", &o.Slug}, {"o", &o.O}} {
		if b, ok := raw[c.name]; ok {
			if err := json.Unmarshal(b, c.dst); err != nil {
				return Org{}, fmt.Errorf("claim %q: %v", c.name, err)
			}
		}
	}
	return o, nil
}

// Active returns the active organisation and its role, "org:"-prefixed in
// both forms, or empty values for a session without one. It refuses a token
// that carries both forms, only half of one, or an unknown version.
func (o *Org) Active() (auth.OrgID, string, error) {
	v1 := o.ID != "" || o.Role != "" || o.Slug != ""
	switch o.V {
	case 0, 1:
		if o.O != nil {
			return "", "", errors.New(`v1 token carries the v2 "o" claim`)
		}
		if !v1 {
			return "", "", nil
		}
		if o.ID == "" || o.Role == "" {
			return "", "", errors.New("org_id and org_role must come together")
		}
		if err := CheckText("org_id", o.ID); err != nil {
			return "", "", err
		}
		return auth.OrgID(o.ID), o.Role, CheckText("org_role", o.Role)
	case 2:
		if v1 {
			return "", "", errors.New("v2 token carries v1 org claims")
		}
		if o.O == nil {
			return "", "", nil
		}
		if o.O.ID == "" || o.O.Role == "" {
			return "", "", errors.New(`"o" needs "id" and "rol"`)
		}
		if err := CheckText("o.id", o.O.ID); err != nil {
			return "", "", err
		}
		role := "org:" + o.O.Role
		return auth.OrgID(o.O.ID), role, CheckText("o.rol", role)
	default:
		return "", "", fmt.Errorf("unknown claims version %d", o.V)
	}
}

// CheckText refuses empty, oversized or non-printable identifiers: they end
// up in storage keys and audit records. name is the claim or field named in
// the error.
func CheckText(name, s string) error {
	if s == "" || len(s) > MaxTextBytes || !utf8.ValidString(s) ||
		strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return fmt.Errorf("%s must be 1 to %d bytes of printable UTF-8", name, MaxTextBytes)
	}
	return nil
}
