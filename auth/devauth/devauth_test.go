package devauth_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/authtest"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/auth/internal/claims/claimstest"
	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	a, foreign *devauth.Authority
	key        ed25519.PrivateKey
	foreignKey ed25519.PrivateKey
	opts       devauth.Options
	staff      map[string]any
}

func newAuthority(t testing.TB, opts *devauth.Options) (*devauth.Authority, ed25519.PrivateKey) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := devauth.New(key, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, key
}

func newHarness(opts devauth.Options, staff map[string]any) func(t *testing.T) authtest.Harness {
	return func(t *testing.T) authtest.Harness {
		opts.Now = func() time.Time { return epoch }
		h := &harness{opts: opts, staff: staff}
		h.a, h.key = newAuthority(t, &h.opts)
		h.foreign, h.foreignKey = newAuthority(t, &h.opts)
		return h
	}
}

func (h *harness) sign(t *testing.T, key ed25519.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	hdr := map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": h.a.KeyID()}
	for k, v := range header {
		if k == "alg" {
			t.Fatal("Mint: header may not set alg")
		}
		if v == nil {
			delete(hdr, k)
		} else {
			hdr[k] = v
		}
	}
	tok, err := authtest.Encode(hdr, claims, func(in []byte) ([]byte, error) { return ed25519.Sign(key, in), nil })
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (h *harness) Authenticator() auth.Authenticator { return h.a }
func (h *harness) Mint(t *testing.T, header, claims map[string]any) string {
	return h.sign(t, h.key, header, claims)
}
func (h *harness) Foreign(t *testing.T, header, claims map[string]any) string {
	return h.sign(t, h.foreignKey, header, claims)
}
func (h *harness) PublicKey() crypto.PublicKey { return h.a.PublicKey() }
func (h *harness) Issuer() string              { return h.opts.Issuer }
func (h *harness) AuthorizedParty() string     { return h.opts.AuthorizedParties[0] }
func (h *harness) Now() time.Time              { return epoch }
func (h *harness) Leeway() time.Duration       { return h.opts.Leeway }
func (h *harness) MaxLifetime() time.Duration  { return h.opts.MaxLifetime }
func (h *harness) StaffClaims() map[string]any { return maps.Clone(h.staff) }

var baseOpts = devauth.Options{
	Issuer:            "https://clerk.compatool.test",
	AuthorizedParties: []string{"https://app.compatool.test", "http://localhost:3000"},
	Leeway:            5 * time.Second,
	MaxLifetime:       10 * time.Minute,
}

func TestConformance(t *testing.T) {
	t.Run("StaffClaim", func(t *testing.T) {
		opts := baseOpts
		opts.StaffClaim = "staff"
		authtest.RunConformanceTests(t, newHarness(opts, map[string]any{"staff": true}))
	})
	t.Run("StaffRole", func(t *testing.T) {
		opts := baseOpts
		opts.StaffRoles, opts.StaffOrg = []string{"org:support"}, "org_platform"
		authtest.RunConformanceTests(t, newHarness(opts, map[string]any{"org_id": "org_platform", "org_role": "org:support"}))
	})
}

func TestIssueAuthenticate(t *testing.T) {
	opts := baseOpts
	opts.StaffClaim = "staff"
	opts.Now = func() time.Time { return epoch }
	a, _ := newAuthority(t, &opts)
	iat := epoch
	for _, v2 := range []bool{false, true} {
		for _, c := range []struct {
			in   devauth.Claims
			want auth.Principal
		}{
			{devauth.Claims{Subject: "user_1"}, auth.Principal{Subject: "user_1"}},
			{devauth.Claims{Subject: "user_1", Org: "org_a"}, auth.Principal{Subject: "user_1", Org: "org_a", Role: "org:member"}},
			{devauth.Claims{Subject: "user_1", Org: "org_a", Role: "org:admin", OrgSlug: "a"}, auth.Principal{Subject: "user_1", Org: "org_a", Role: "org:admin"}},
			{devauth.Claims{Subject: "user_2", Staff: true, Lifetime: 2 * time.Minute}, auth.Principal{Subject: "user_2", Staff: true, ExpiresAt: iat.Add(2 * time.Minute)}},
		} {
			c.in.V2 = v2
			tok, err := a.Issue(c.in)
			if err != nil {
				t.Fatalf("Issue(%+v) = %v", c.in, err)
			}
			p, err := a.Authenticate(context.Background(), tok)
			if err != nil {
				t.Fatalf("Authenticate(Issue(%+v)) = %v", c.in, err)
			}
			c.want.IssuedAt = iat
			if c.want.ExpiresAt.IsZero() {
				c.want.ExpiresAt = iat.Add(devauth.DefaultLifetime)
			}
			if diff := cmp.Diff(&c.want, p); diff != "" {
				t.Errorf("Issue(%+v): principal (-want +got):\n%s", c.in, diff)
			}
		}
	}
}

func TestIssueRefuses(t *testing.T) {
	a, _ := newAuthority(t, &baseOpts) // no StaffClaim
	for name, c := range map[string]devauth.Claims{
		"no subject":        {},
		"staff unset":       {Subject: "u", Staff: true},
		"role without org":  {Subject: "u", Role: "org:admin"},
		"role unprefixed":   {Subject: "u", Org: "o", Role: "admin"},
		"lifetime too long": {Subject: "u", Lifetime: time.Hour},
		"foreign party":     {Subject: "u", AuthorizedParty: "https://evil.example"},
	} {
		if tok, err := a.Issue(c); err == nil {
			t.Errorf("%s: Issue(%+v) = %q, want an error", name, c, tok)
		}
	}
}

func TestNewRefuses(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	for name, o := range map[string]devauth.Options{
		"leeway":            {Leeway: 2 * time.Minute},
		"lifetime":          {MaxLifetime: 2 * time.Hour},
		"reserved claim":    {StaffClaim: "org_role"},
		"roles without org": {StaffRoles: []string{"org:admin"}},
		"empty party":       {AuthorizedParties: []string{""}},
	} {
		if _, err := devauth.New(key, &o); err == nil {
			t.Errorf("%s: New(%+v) succeeded, want an error", name, o)
		}
	}
	if _, err := devauth.New(key[:10], nil); err == nil {
		t.Error("New(short key) succeeded")
	}
}

// TestStaffRule pins the driver-specific edges of the staff rule.
func TestStaffRule(t *testing.T) {
	opts := baseOpts
	opts.StaffClaim, opts.StaffRoles, opts.StaffOrg = "staff", []string{"org:support"}, "org_platform"
	opts.Now = func() time.Time { return epoch }
	h := newHarness(opts, nil)(t).(*harness)
	base := map[string]any{"sub": "u", "iss": opts.Issuer, "azp": opts.AuthorizedParties[0], "iat": epoch.Unix(), "exp": epoch.Unix() + 60}
	for _, c := range []struct {
		name  string
		extra map[string]any
		staff bool
	}{
		{"claim true", map[string]any{"staff": true}, true},
		{"claim string", map[string]any{"staff": "true"}, false},
		{"claim number", map[string]any{"staff": 1}, false},
		{"claim false", map[string]any{"staff": false}, false},
		{"role in staff org", map[string]any{"org_id": "org_platform", "org_role": "org:support"}, true},
		{"v2 role in staff org", map[string]any{"v": 2, "o": map[string]any{"id": "org_platform", "rol": "support"}}, true},
		{"role in another org", map[string]any{"org_id": "org_customer", "org_role": "org:support"}, false},
		{"admin of staff org", map[string]any{"org_id": "org_platform", "org_role": "org:admin"}, false},
	} {
		p, err := h.a.Authenticate(context.Background(), h.Mint(t, nil, claimstest.With(base, c.extra)))
		if err != nil || p.Staff != c.staff {
			t.Errorf("%s: Authenticate = (%+v, %v), want staff=%v", c.name, p, err, c.staff)
		}
	}
	for name, extra := range map[string]map[string]any{
		"both org forms":   {"v": 2, "o": map[string]any{"id": "org_a", "rol": "admin"}, "org_id": "org_b", "org_role": "org:admin"},
		"v1 with o":        {"o": map[string]any{"id": "org_a", "rol": "admin"}},
		"control in sub":   {"sub": "u\x00"},
		"typ not JWT":      {},
		"o not an object":  {"v": 2, "o": "org_a"},
		"role without org": {"org_role": "org:admin"},
	} {
		header := map[string]any(nil)
		if name == "typ not JWT" {
			header = map[string]any{"typ": "at+jwt"}
		}
		if _, err := h.a.Authenticate(context.Background(), h.Mint(t, header, claimstest.With(base, extra))); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("%s: Authenticate = %v, want auth.ErrUnauthenticated", name, err)
		}
	}
}

func TestPublicJWKS(t *testing.T) {
	a, _ := newAuthority(t, nil)
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(a.PublicJWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys, want 1", len(set.Keys))
	}
	k := set.Keys[0]
	want := map[string]string{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": a.KeyID(), "x": k["x"]}
	if diff := cmp.Diff(want, k); diff != "" || k["d"] != "" {
		t.Errorf("JWKS key (-want +got):\n%s", diff)
	}
	if x := base64.RawURLEncoding.EncodeToString(a.PublicKey()); k["x"] != x {
		t.Errorf("JWKS x = %q, want the public key %q", k["x"], x)
	}
	// RFC 7638 §3.2: SHA-256 over the required members in lexicographic order.
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + k["x"] + `"}`))
	if want := base64.RawURLEncoding.EncodeToString(sum[:]); a.KeyID() != want {
		t.Errorf("KeyID = %q, want the RFC 7638 thumbprint %q", a.KeyID(), want)
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	a, _ := newAuthority(b, nil)
	tok, err := a.Issue(devauth.Claims{Subject: "user_1", Org: "org_a", Role: "org:admin"})
	if err != nil {
		b.Fatal(err)
	}
	claimstest.Benchmark(b, a, tok)
}
