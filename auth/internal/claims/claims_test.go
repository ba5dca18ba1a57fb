package claims_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/internal/claims"
	"github.com/compatool/compatool/auth/internal/claims/claimstest"
	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	issuer = "https://clerk.compatool.test"
	party  = "https://app.compatool.test"
)

func newPolicy(t *testing.T, o claims.Policy) *claims.Policy {
	t.Helper()
	o.Issuer, o.AuthorizedParties = issuer, []string{party, "http://localhost:3000"}
	o.Now = func() time.Time { return epoch }
	p, err := claims.NewPolicy(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewPolicyDefaults(t *testing.T) {
	for _, c := range []struct {
		name     string
		in       claims.Policy
		leeway   time.Duration
		maxLife  time.Duration
		staffOrg auth.OrgID
	}{
		{"zero", claims.Policy{}, claims.DefaultLeeway, claims.DefaultMaxLifetime, ""},
		{"no leeway", claims.Policy{Leeway: -1}, 0, claims.DefaultMaxLifetime, ""},
		{"largest", claims.Policy{Leeway: claims.MaxLeeway, MaxLifetime: claims.MaxMaxLifetime}, claims.MaxLeeway, claims.MaxMaxLifetime, ""},
		{"smallest lifetime", claims.Policy{MaxLifetime: time.Second}, claims.DefaultLeeway, time.Second, ""},
		{"staff roles", claims.Policy{StaffRoles: []string{"org:support"}, StaffOrg: "org_platform"}, claims.DefaultLeeway, claims.DefaultMaxLifetime, "org_platform"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.in.Issuer, c.in.AuthorizedParties = issuer, []string{party}
			p, err := claims.NewPolicy(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if p.Leeway != c.leeway || p.MaxLifetime != c.maxLife || p.StaffOrg != c.staffOrg || p.Now == nil {
				t.Errorf("NewPolicy(%+v) = %+v, want leeway %v, max lifetime %v, staff org %q and a clock", c.in, p, c.leeway, c.maxLife, c.staffOrg)
			}
		})
	}
}

func TestNewPolicyClones(t *testing.T) {
	in := claims.Policy{Issuer: issuer, AuthorizedParties: []string{party}, StaffRoles: []string{"org:support"}, StaffOrg: "org_platform"}
	p, err := claims.NewPolicy(in)
	if err != nil {
		t.Fatal(err)
	}
	in.AuthorizedParties[0], in.StaffRoles[0] = "https://evil.example", "org:admin"
	if !p.Accepts(party) || p.Accepts("https://evil.example") || p.StaffRoles[0] != "org:support" {
		t.Errorf("the policy shares its slices with the caller: %+v", p)
	}
}

func TestNewPolicyRefuses(t *testing.T) {
	ok := claims.Policy{Issuer: issuer, AuthorizedParties: []string{party}}
	with := func(f func(*claims.Policy)) claims.Policy {
		p := ok
		f(&p)
		return p
	}
	for _, c := range []struct {
		name string
		in   claims.Policy
		want string // in the error
	}{
		{"no issuer", with(func(p *claims.Policy) { p.Issuer = "" }), "issuer"},
		{"no parties", with(func(p *claims.Policy) { p.AuthorizedParties = nil }), "Options.AuthorizedParties"},
		{"empty party", with(func(p *claims.Policy) { p.AuthorizedParties = []string{party, ""} }), "Options.AuthorizedParties"},
		{"leeway", with(func(p *claims.Policy) { p.Leeway = claims.MaxLeeway + 1 }), "Options.Leeway"},
		{"lifetime too long", with(func(p *claims.Policy) { p.MaxLifetime = claims.MaxMaxLifetime + 1 }), "Options.MaxLifetime"},
		{"lifetime too short", with(func(p *claims.Policy) { p.MaxLifetime = time.Second - 1 }), "Options.MaxLifetime"},
		{"negative lifetime", with(func(p *claims.Policy) { p.MaxLifetime = -time.Minute }), "Options.MaxLifetime"},
		{"reserved claim", with(func(p *claims.Policy) { p.StaffClaim = "org_role" }), "Options.StaffClaim"},
		{"v2 claim", with(func(p *claims.Policy) { p.StaffClaim = "o" }), "Options.StaffClaim"},
		{"roles without org", with(func(p *claims.Policy) { p.StaffRoles = []string{"org:admin"} }), "Options.StaffOrg"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := claims.NewPolicy(c.in)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("NewPolicy = (%+v, %v), want an error naming %s", p, err, c.want)
			}
		})
	}
}

func ptr(v int64) *int64 { return &v }

func TestPrincipal(t *testing.T) {
	p := newPolicy(t, claims.Policy{Leeway: 5 * time.Second, MaxLifetime: 10 * time.Minute})
	now := epoch.Unix()
	valid := claims.Registered{
		Subject: "user_1", Issuer: issuer, AuthorizedParty: party,
		IssuedAt: ptr(now), NotBefore: ptr(now), Expiry: ptr(now + 60),
	}
	with := func(f func(*claims.Registered)) claims.Registered {
		r := valid
		f(&r)
		return r
	}
	for _, c := range []struct {
		name string
		in   claims.Registered
		want string // the error, or "" for acceptance
	}{
		{"valid", valid, ""},
		{"no nbf", with(func(r *claims.Registered) { r.NotBefore = nil }), ""},
		{"second party", with(func(r *claims.Registered) { r.AuthorizedParty = "http://localhost:3000" }), ""},
		{"expired within leeway", with(func(r *claims.Registered) { r.IssuedAt, r.Expiry = ptr(now-65), ptr(now-5) }), ""},
		{"expired beyond leeway", with(func(r *claims.Registered) { r.IssuedAt, r.Expiry = ptr(now-66), ptr(now-6) }), "token expired at 2026-03-01T11:59:54Z"},
		{"issued within leeway", with(func(r *claims.Registered) { r.IssuedAt, r.NotBefore, r.Expiry = ptr(now+5), nil, ptr(now+65) }), ""},
		{"issued beyond leeway", with(func(r *claims.Registered) { r.IssuedAt, r.NotBefore, r.Expiry = ptr(now+6), nil, ptr(now+66) }), "token issued in the future"},
		{"nbf within leeway", with(func(r *claims.Registered) { r.NotBefore = ptr(now + 5) }), ""},
		{"nbf beyond leeway", with(func(r *claims.Registered) { r.NotBefore = ptr(now + 6) }), "token not valid before 2026-03-01T12:00:06Z"},
		{"longest lifetime", with(func(r *claims.Registered) { r.Expiry = ptr(now + 600) }), ""},
		{"lifetime over maximum", with(func(r *claims.Registered) { r.Expiry = ptr(now + 601) }), "token lifetime 10m1s exceeds 10m0s"},
		{"exp equals iat", with(func(r *claims.Registered) { r.Expiry = ptr(now) }), "token expires before it is issued"},
		{"exp before iat", with(func(r *claims.Registered) { r.IssuedAt, r.Expiry = ptr(now+1), ptr(now) }), "token expires before it is issued"},
		{"no iat", with(func(r *claims.Registered) { r.IssuedAt = nil }), "iat and exp are required"},
		{"no exp", with(func(r *claims.Registered) { r.Expiry = nil }), "iat and exp are required"},
		{"iat zero", with(func(r *claims.Registered) { r.IssuedAt = ptr(0) }), "iat or exp out of range"},
		{"exp negative", with(func(r *claims.Registered) { r.Expiry = ptr(-1) }), "iat or exp out of range"},
		{"exp past year 5138", with(func(r *claims.Registered) { r.Expiry = ptr(1e11 + 1) }), "iat or exp out of range"},
		{"no subject", with(func(r *claims.Registered) { r.Subject = "" }), "sub must be 1 to 256 bytes of printable UTF-8"},
		{"control in subject", with(func(r *claims.Registered) { r.Subject = "u\x00" }), "sub must be 1 to 256 bytes of printable UTF-8"},
		{"wrong issuer", with(func(r *claims.Registered) { r.Issuer = issuer + ".evil" }), `issuer "https://clerk.compatool.test.evil" is not "https://clerk.compatool.test"`},
		{"no party", with(func(r *claims.Registered) { r.AuthorizedParty = "" }), `authorized party "" is not accepted`},
		{"foreign party", with(func(r *claims.Registered) { r.AuthorizedParty = "https://evil.example" }), `authorized party "https://evil.example" is not accepted`},
		// Several faults: the order of the checks decides the error.
		{"bad subject and issuer", with(func(r *claims.Registered) { r.Subject, r.Issuer = "", "x" }), "sub must be"},
		{"bad issuer and dates", with(func(r *claims.Registered) { r.Issuer, r.Expiry = "x", nil }), `issuer "x"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := p.Principal(c.in)
			if c.want != "" {
				if err == nil || err.Error() != c.want && !strings.HasPrefix(err.Error(), c.want) {
					t.Fatalf("Principal = (%+v, %v), want error %q", got, err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Principal = %v", err)
			}
			want := &auth.Principal{Subject: c.in.Subject, IssuedAt: time.Unix(*c.in.IssuedAt, 0).UTC(), ExpiresAt: time.Unix(*c.in.Expiry, 0).UTC()}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPrincipalNoLeeway(t *testing.T) {
	p := newPolicy(t, claims.Policy{Leeway: -1})
	now := epoch.Unix()
	for _, c := range []struct {
		name    string
		iat     int64
		exp     int64
		refused bool
	}{
		{"expires now", now - 60, now, false},
		{"expired a second ago", now - 60, now - 1, true},
		{"issued now", now, now + 60, false},
		{"issued a second ahead", now + 1, now + 60, true},
	} {
		if _, err := p.Principal(claims.Registered{Subject: "u", Issuer: issuer, AuthorizedParty: party, IssuedAt: &c.iat, Expiry: &c.exp}); (err != nil) != c.refused {
			t.Errorf("%s: Principal = %v, want refused %v", c.name, err, c.refused)
		}
	}
}

func raw(t *testing.T, m map[string]any) map[string]json.RawMessage {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]json.RawMessage
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// orgCases hold Clerk's organisation claims and what they resolve to. They
// run through both ways of filling [claims.Org].
var orgCases = []struct {
	name   string
	claims map[string]any
	org    auth.OrgID
	role   string
	err    string // "" for acceptance
}{
	{"v1", map[string]any{"org_id": "org_a", "org_role": "org:admin", "org_slug": "a"}, "org_a", "org:admin", ""},
	{"v1 explicit", map[string]any{"v": 1, "org_id": "org_a", "org_role": "org:admin"}, "org_a", "org:admin", ""},
	{"v1 no org", map[string]any{}, "", "", ""},
	{"v2", map[string]any{"v": 2, "o": map[string]any{"id": "org_a", "rol": "admin", "slg": "a"}}, "org_a", "org:admin", ""},
	{"v2 extra fields", map[string]any{"v": 2, "o": map[string]any{"id": "org_a", "rol": "member", "per": "read", "fpm": "1"}}, "org_a", "org:member", ""},
	{"v2 no org", map[string]any{"v": 2}, "", "", ""},
	{"v1 org without role", map[string]any{"org_id": "org_a"}, "", "", "org_id and org_role must come together"},
	{"v1 role without org", map[string]any{"org_role": "org:admin"}, "", "", "org_id and org_role must come together"},
	{"v1 slug alone", map[string]any{"org_slug": "a"}, "", "", "org_id and org_role must come together"},
	{"v1 with o", map[string]any{"o": map[string]any{"id": "org_a", "rol": "admin"}}, "", "", `v1 token carries the v2 "o" claim`},
	{"v2 with v1 claims", map[string]any{"v": 2, "o": map[string]any{"id": "org_a", "rol": "admin"}, "org_id": "org_b", "org_role": "org:admin"}, "", "", "v2 token carries v1 org claims"},
	{"v2 with v1 slug only", map[string]any{"v": 2, "org_slug": "b"}, "", "", "v2 token carries v1 org claims"},
	{"v2 o without role", map[string]any{"v": 2, "o": map[string]any{"id": "org_a"}}, "", "", `"o" needs "id" and "rol"`},
	{"v2 o without id", map[string]any{"v": 2, "o": map[string]any{"rol": "admin"}}, "", "", `"o" needs "id" and "rol"`},
	{"unknown version", map[string]any{"v": 99, "org_id": "org_a", "org_role": "org:admin"}, "", "", "unknown claims version 99"},
	{"control in v1 org", map[string]any{"org_id": "org\x00a", "org_role": "org:admin"}, "", "", "org_id must be"},
	{"control in v1 role", map[string]any{"org_id": "org_a", "org_role": "org:\nadmin"}, "", "", "org_role must be"},
	{"control in v2 org", map[string]any{"v": 2, "o": map[string]any{"id": "org\u200ba", "rol": "admin"}}, "", "", "o.id must be"},
	{"v2 role too long", map[string]any{"v": 2, "o": map[string]any{"id": "org_a", "rol": strings.Repeat("r", claims.MaxTextBytes-3)}}, "", "", "o.rol must be"},
}

func TestOrgActive(t *testing.T) {
	for _, c := range orgCases {
		t.Run(c.name, func(t *testing.T) {
			// DecodeOrg, as clerkauth reads it, and json.Unmarshal into an
			// embedding struct, as devauth does, fill Org alike.
			decoded, err := claims.DecodeOrg(raw(t, c.claims))
			if err != nil {
				t.Fatal(err)
			}
			var embedded struct {
				claims.Org
				Sub string `json:"sub"`
			}
			b, _ := json.Marshal(c.claims)
			if err := json.Unmarshal(b, &embedded); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(decoded, embedded.Org); diff != "" {
				t.Fatalf("DecodeOrg and json.Unmarshal differ (-DecodeOrg +Unmarshal):\n%s", diff)
			}
			org, role, err := decoded.Active()
			if c.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.err) {
					t.Fatalf("Active = (%q, %q, %v), want error %q", org, role, err, c.err)
				}
				return
			}
			if err != nil || org != c.org || role != c.role {
				t.Errorf("Active = (%q, %q, %v), want (%q, %q, nil)", org, role, err, c.org, c.role)
			}
		})
	}
}

func TestDecodeOrg(t *testing.T) {
	base := map[string]any{"sub": "u", "org_id": "org_a", "org_role": "org:admin"}
	for _, c := range []struct {
		name   string
		claims map[string]any
		want   claims.Org
		err    string
	}{
		{"v1", base, claims.Org{ID: "org_a", Role: "org:admin"}, ""},
		{"v2", map[string]any{"v": 2, "o": map[string]any{"id": "org_a", "rol": "admin", "slg": "a"}}, claims.Org{V: 2, O: &claims.OrgV2{ID: "org_a", Role: "admin", Slug: "a"}}, ""},
		{"names are exact", map[string]any{"ORG_ID": "org_a", "Org_Role": "org:admin", "O": map[string]any{"id": "x"}}, claims.Org{}, ""},
		{"v a string", claimstest.With(base, map[string]any{"v": "2"}), claims.Org{}, `claim "v": `},
		{"v a fraction", claimstest.With(base, map[string]any{"v": 2.5}), claims.Org{}, `claim "v": `},
		{"org_id a number", claimstest.With(base, map[string]any{"org_id": 7}), claims.Org{}, `claim "org_id": `},
		{"o a string", map[string]any{"v": 2, "o": "org_a"}, claims.Org{}, `claim "o": `},
		{"o null", map[string]any{"v": 2, "o": nil}, claims.Org{V: 2}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := claims.DecodeOrg(raw(t, c.claims))
			if c.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.err) {
					t.Fatalf("DecodeOrg = (%+v, %v), want error %q", got, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("DecodeOrg (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStaff(t *testing.T) {
	p := newPolicy(t, claims.Policy{StaffClaim: "staff", StaffRoles: []string{"org:support"}, StaffOrg: "org_platform"})
	claimOnly := newPolicy(t, claims.Policy{StaffClaim: "staff"})
	none := newPolicy(t, claims.Policy{})
	for _, c := range []struct {
		name   string
		policy *claims.Policy
		org    auth.OrgID
		role   string
		claims map[string]any
		staff  bool
	}{
		{"claim true", p, "", "", map[string]any{"staff": true}, true},
		{"claim string", p, "", "", map[string]any{"staff": "true"}, false},
		{"claim number", p, "", "", map[string]any{"staff": 1}, false},
		{"claim false", p, "", "", map[string]any{"staff": false}, false},
		{"claim object", p, "", "", map[string]any{"staff": map[string]any{"is": true}}, false},
		{"claim absent", p, "org_a", "org:admin", nil, false},
		{"other claim true", p, "", "", map[string]any{"admin": true}, false},
		{"role in staff org", p, "org_platform", "org:support", nil, true},
		{"role in another org", p, "org_customer", "org:support", nil, false},
		{"admin of staff org", p, "org_platform", "org:admin", nil, false},
		{"no staff rule", none, "org_platform", "org:support", map[string]any{"staff": true}, false},
		{"claim rule only", claimOnly, "org_platform", "org:support", nil, false},
		{"claim rule with no org", claimOnly, "", "", map[string]any{"staff": true}, true},
	} {
		pr := &auth.Principal{Subject: "u", Org: c.org, Role: c.role}
		if got := c.policy.Staff(pr, raw(t, c.claims)); got != c.staff {
			t.Errorf("%s: Staff = %v, want %v", c.name, got, c.staff)
		}
	}
}

func TestCheckText(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{
		{"user_2abc", true},
		{"org:admin", true},
		{"Zoë Ågren", true},
		{strings.Repeat("x", claims.MaxTextBytes), true},
		{strings.Repeat("x", claims.MaxTextBytes+1), false},
		{"", false},
		{"a\x00b", false},
		{"tab\there", false},
		{"zero\u200bwidth", false},
		{"bidi\u202eoverride", false},
		{"\xff\xfe", false},
	} {
		err := claims.CheckText("sub", c.in)
		if (err == nil) != c.ok {
			t.Errorf("CheckText(%q) = %v, want ok %v", c.in, err, c.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "sub must be") {
			t.Errorf("CheckText(%q) = %q, want it to name the claim", c.in, err)
		}
	}
}
