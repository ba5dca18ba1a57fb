package clerkauth_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/authtest"
	"github.com/compatool/compatool/auth/clerkauth"
	"github.com/compatool/compatool/auth/internal/claims/claimstest"
	"github.com/google/go-cmp/cmp"
)

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	issuer = "https://clerk.compatool.test"
	party  = "https://app.compatool.test"
)

// key is a signing key with its kid and JWS algorithm.
type key struct {
	kid, alg string
	priv     crypto.Signer
}

func (k key) sign(in []byte) ([]byte, error) {
	if k.alg == "EdDSA" {
		return ed25519.Sign(k.priv.(ed25519.PrivateKey), in), nil
	}
	sum := sha256.Sum256(in)
	return rsa.SignPKCS1v15(nil, k.priv.(*rsa.PrivateKey), crypto.SHA256, sum[:])
}

// jwk is the public JWK of k, as Clerk's JWKS lists it.
func (k key) jwk() map[string]any {
	m := map[string]any{"kid": k.kid, "alg": k.alg, "use": "sig"}
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"] = "RSA", b64(pub.N.Bytes())
		m["e"] = b64(big.NewInt(int64(pub.E)).Bytes())
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64(pub)
	}
	return m
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// mint signs claims with k; header entries override the default header and
// nil values remove fields.
func (k key) mint(t testing.TB, header, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"alg": k.alg, "typ": "JWT", "kid": k.kid}
	for name, v := range header {
		if v == nil {
			delete(h, name)
		} else {
			h[name] = v
		}
	}
	tok, err := authtest.Encode(h, claims, k.sign)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Keys are generated once per test binary: RSA key generation is slow.
var testKeys = sync.OnceValue(func() map[string]key {
	keys := map[string]key{}
	for _, name := range []string{"rsa", "rsa-foreign", "rsa-other-instance"} {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[name] = key{kid: "ins_" + name, alg: "RS256", priv: k}
	}
	for _, name := range []string{"ed", "ed-foreign", "ed-rotated"} {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		keys[name] = key{kid: "ins_" + name, alg: "EdDSA", priv: k}
	}
	return keys
})

// jwksServer is a Clerk Frontend API serving a JWKS over TLS and counting
// the fetches it answers.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	body    []byte
	status  int
	secret  string        // required bearer secret, if any
	gate    chan struct{} // when set, requests wait for it to close
}

func newJWKSServer(t testing.TB, keys ...key) *jwksServer {
	s := &jwksServer{status: http.StatusOK}
	s.setKeys(t, keys...)
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		body, status, secret, gate := s.body, s.status, s.secret, s.gate
		s.mu.Unlock()
		s.fetches.Add(1)
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		if r.URL.Path != "/.well-known/jwks.json" || secret != "" && r.Header.Get("Authorization") != "Bearer "+secret {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(t testing.TB, keys ...key) {
	t.Helper()
	set := []map[string]any{}
	for _, k := range keys {
		set = append(set, k.jwk())
	}
	body, err := json.Marshal(map[string]any{"keys": set})
	if err != nil {
		t.Fatal(err)
	}
	s.set(body, http.StatusOK)
}

func (s *jwksServer) set(body []byte, status int) {
	s.mu.Lock()
	s.body, s.status = body, status
	s.mu.Unlock()
}

// block makes requests wait until the returned channel is closed.
func (s *jwksServer) block() chan struct{} {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	return gate
}

func (s *jwksServer) url() string { return s.URL + "/.well-known/jwks.json" }

// fakeClock is a settable clock.
type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(epoch.UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *fakeClock) claims() map[string]any  { return claimsAt(c.Now()) }
func claimsAt(now time.Time) map[string]any {
	iat := now.Unix()
	return map[string]any{
		"sub": "user_1", "iss": issuer, "azp": party, "sid": "sess_1",
		"iat": iat, "nbf": iat, "exp": iat + 60, "org_id": "org_a", "org_role": "org:admin",
	}
}

func newAuthenticator(t testing.TB, srv *jwksServer, opts clerkauth.Options) *clerkauth.Authenticator {
	t.Helper()
	if opts.AuthorizedParties == nil {
		opts.AuthorizedParties = []string{party, "http://localhost:3000"}
	}
	opts.JWKSURL, opts.HTTPClient = srv.url(), srv.Client()
	a, err := clerkauth.New(issuer, &opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// harness runs the conformance suite against a JWKS that lists the trusted
// key and a key of the other algorithm.
type harness struct {
	a                *clerkauth.Authenticator
	trusted, foreign key
	opts             clerkauth.Options
	staff            map[string]any
}

func newHarness(trusted, other, foreign string, opts clerkauth.Options, staff map[string]any) func(t *testing.T) authtest.Harness {
	return func(t *testing.T) authtest.Harness {
		keys := testKeys()
		opts.Now = func() time.Time { return epoch }
		srv := newJWKSServer(t, keys[trusted], keys[other])
		h := &harness{trusted: keys[trusted], opts: opts, staff: staff}
		h.foreign = keys[foreign]
		h.foreign.kid = h.trusted.kid
		h.a = newAuthenticator(t, srv, opts)
		return h
	}
}

func (h *harness) Authenticator() auth.Authenticator { return h.a }
func (h *harness) Mint(t *testing.T, header, claims map[string]any) string {
	return h.trusted.mint(t, header, claims)
}
func (h *harness) Foreign(t *testing.T, header, claims map[string]any) string {
	return h.foreign.mint(t, header, claims)
}
func (h *harness) PublicKey() crypto.PublicKey { return h.trusted.priv.Public() }
func (h *harness) Issuer() string              { return issuer }
func (h *harness) AuthorizedParty() string     { return party }
func (h *harness) Now() time.Time              { return epoch }
func (h *harness) Leeway() time.Duration       { return h.opts.Leeway }
func (h *harness) MaxLifetime() time.Duration  { return h.opts.MaxLifetime }
func (h *harness) StaffClaims() map[string]any { return maps.Clone(h.staff) }

func TestConformance(t *testing.T) {
	base := clerkauth.Options{Leeway: 5 * time.Second, MaxLifetime: 10 * time.Minute}
	claim := base
	claim.StaffClaim = "staff"
	role := base
	role.StaffRoles, role.StaffOrg = []string{"org:support"}, "org_platform"
	for _, alg := range []struct{ name, trusted, other string }{
		{"RS256", "rsa", "ed"},
		{"EdDSA", "ed", "rsa"},
	} {
		t.Run(alg.name, func(t *testing.T) {
			t.Run("StaffClaim", func(t *testing.T) {
				authtest.RunConformanceTests(t, newHarness(alg.trusted, alg.other, alg.trusted+"-foreign", claim, map[string]any{"staff": true}))
			})
			t.Run("StaffRole", func(t *testing.T) {
				authtest.RunConformanceTests(t, newHarness(alg.trusted, alg.other, alg.trusted+"-foreign", role,
					map[string]any{"org_id": "org_platform", "org_role": "org:support"}))
			})
		})
	}
}

func refused(t *testing.T, a *clerkauth.Authenticator, token string) error {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if !errors.Is(err, auth.ErrUnauthenticated) || p != nil {
		t.Fatalf("Authenticate = (%+v, %v), want a refusal wrapping auth.ErrUnauthenticated", p, err)
	}
	if token != "" && strings.Contains(err.Error(), token) {
		t.Fatalf("the error echoes the token: %v", err)
	}
	return err
}

func accepted(t *testing.T, a *clerkauth.Authenticator, token string) *auth.Principal {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if err != nil {
		t.Fatalf("Authenticate(valid) = %v", err)
	}
	return p
}

// TestAttacks covers the rows of the attack table that depend on this
// driver's key handling; the others are in the conformance suite.
func TestAttacks(t *testing.T) {
	keys := testKeys()
	clk := newClock()
	srv := newJWKSServer(t, keys["rsa"], keys["ed"])
	a := newAuthenticator(t, srv, clerkauth.Options{Now: clk.Now})
	accepted(t, a, keys["rsa"].mint(t, nil, clk.claims()))
	accepted(t, a, keys["ed"].mint(t, nil, clk.claims()))

	other := newJWKSServer(t, keys["rsa-other-instance"])
	otherIssuer := "https://clerk.other.test"
	otherClaims := claimstest.With(clk.claims(), map[string]any{"iss": otherIssuer})
	// the other instance's verifier accepts its own token: only the
	// instance differs.
	b, err := clerkauth.New(otherIssuer, &clerkauth.Options{AuthorizedParties: []string{party}, JWKSURL: other.url(), HTTPClient: other.Client(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	accepted(t, b, keys["rsa-other-instance"].mint(t, nil, otherClaims))

	rsaUnderEd := keys["rsa"]
	rsaUnderEd.kid = keys["ed"].kid
	edUnderRSA := keys["ed"]
	edUnderRSA.kid = keys["rsa"].kid
	for _, c := range []struct{ name, token string }{
		{"RS256 token checked against the Ed25519 key", rsaUnderEd.mint(t, nil, clk.claims())},
		{"EdDSA token checked against the RSA key", edUnderRSA.mint(t, nil, clk.claims())},
		{"another instance's token", keys["rsa-other-instance"].mint(t, nil, otherClaims)},
		{"another instance's key under our issuer", keys["rsa-other-instance"].mint(t, nil, clk.claims())},
		{"another instance's key under our kid", keys["rsa-other-instance"].mint(t, map[string]any{"kid": keys["rsa"].kid}, clk.claims())},
		{"no kid", keys["rsa"].mint(t, map[string]any{"kid": nil}, clk.claims())},
		{"typ not JWT", keys["rsa"].mint(t, map[string]any{"typ": "at+jwt"}, clk.claims())},
		{"JSON serialization", `{"payload":"e30","protected":"e30","signature":"AA"}`},
		{"Clerk's default issuer rule", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"iss": "https://clerk.evil.example"}))},
		{"both org forms", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"v": 2, "o": map[string]any{"id": "org_b", "rol": "admin"}}))},
		{"v1 with o", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"org_id": nil, "org_role": nil, "o": map[string]any{"id": "org_b", "rol": "admin"}}))},
		{"o not an object", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"org_id": nil, "org_role": nil, "v": 2, "o": "org_b"}))},
		{"v a string", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"v": "2"}))},
		{"pending session", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"v": 2, "org_id": nil, "org_role": nil, "sts": "pending"}))},
		{"control in org", keys["rsa"].mint(t, nil, claimstest.With(clk.claims(), map[string]any{"org_id": "org\x00a"}))},
	} {
		t.Run(c.name, func(t *testing.T) { refused(t, a, c.token) })
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1: refusals must not refetch within the refresh interval", n)
	}
}

func TestUnknownKidFlood(t *testing.T) {
	k := testKeys()["ed"]
	clk := newClock()
	srv := newJWKSServer(t, k)
	a := newAuthenticator(t, srv, clerkauth.Options{Now: clk.Now, RefreshInterval: time.Minute})
	accepted(t, a, k.mint(t, nil, clk.claims()))

	flood := func() {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 250 {
					tok := k.mint(t, map[string]any{"kid": fmt.Sprintf("kid_%d_%d", w, i)}, clk.claims())
					if _, err := a.Authenticate(context.Background(), tok); !errors.Is(err, auth.ErrUnauthenticated) {
						t.Errorf("unknown kid: Authenticate = %v, want auth.ErrUnauthenticated", err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	flood()
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("after 1,000 unknown kids within the interval: %d fetches, want 1 (the warm-up)", n)
	}
	clk.Advance(time.Minute)
	flood()
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("after 1,000 unknown kids in the next interval: %d fetches, want 2", n)
	}
	accepted(t, a, k.mint(t, nil, clk.claims()))
}

func TestRotation(t *testing.T) {
	keys := testKeys()
	oldKey, newKey := keys["ed"], keys["ed-rotated"]
	clk := newClock()
	srv := newJWKSServer(t, oldKey)
	a := newAuthenticator(t, srv, clerkauth.Options{Now: clk.Now, RefreshInterval: time.Minute, MaxKeyAge: 10 * time.Minute})
	accepted(t, a, oldKey.mint(t, nil, clk.claims()))

	srv.setKeys(t, oldKey, newKey)
	refused(t, a, newKey.mint(t, nil, clk.claims())) // within the interval
	clk.Advance(time.Minute)
	accepted(t, a, newKey.mint(t, nil, clk.claims())) // unknown kid: refetched
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}

	// The old key leaves the set; the cache notices once it is MaxKeyAge
	// old, and meanwhile, and while the endpoint fails, keeps working.
	srv.setKeys(t, newKey)
	clk.Advance(9 * time.Minute)
	accepted(t, a, oldKey.mint(t, nil, clk.claims()))
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches before MaxKeyAge, want 2", n)
	}
	srv.set([]byte("oops"), http.StatusInternalServerError)
	clk.Advance(time.Minute)
	accepted(t, a, oldKey.mint(t, nil, clk.claims())) // stale: starts a background fetch, which fails
	if err := a.Refresh(context.Background()); err == nil {
		t.Fatal("Refresh against a failing endpoint succeeded")
	}
	accepted(t, a, oldKey.mint(t, nil, clk.claims()))

	srv.setKeys(t, newKey)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	refused(t, a, oldKey.mint(t, nil, clk.claims()))
	accepted(t, a, newKey.mint(t, nil, clk.claims()))
}

func TestStaleRevalidation(t *testing.T) {
	keys := testKeys()
	oldKey, newKey := keys["ed"], keys["ed-rotated"]
	clk := newClock()
	srv := newJWKSServer(t, oldKey)
	a := newAuthenticator(t, srv, clerkauth.Options{Now: clk.Now, RefreshInterval: time.Minute, MaxKeyAge: time.Minute})
	accepted(t, a, oldKey.mint(t, nil, clk.claims()))
	srv.setKeys(t, newKey)
	clk.Advance(time.Minute)
	accepted(t, a, oldKey.mint(t, nil, clk.claims())) // stale key still used, refetch started
	// newKey is found either in the set the background fetch stored or by
	// joining it while it runs; no third fetch is made either way.
	accepted(t, a, newKey.mint(t, nil, clk.claims()))
	refused(t, a, oldKey.mint(t, nil, clk.claims()))
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestFetchFailures(t *testing.T) {
	k := testKeys()["rsa"]
	huge := append([]byte(`{"keys":[],"pad":"`), bytes.Repeat([]byte("x"), clerkauth.MaxJWKSBytes)...)
	huge = append(huge, `"}`...)
	for _, c := range []struct {
		name   string
		body   []byte
		status int
		want   string
	}{
		{"status", []byte(`{}`), http.StatusServiceUnavailable, "503"},
		{"not JSON", []byte(`<html>`), http.StatusOK, "not a JWKS"},
		{"no usable key", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`), http.StatusOK, "no usable key"},
		{"oversized", huge, http.StatusOK, "exceeds"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.set(c.body, c.status)
			var logs bytes.Buffer
			a := newAuthenticator(t, srv, clerkauth.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err := a.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Refresh = %v, want an error containing %q", err, c.want)
			}
			tok := k.mint(t, nil, claimsAt(time.Now()))
			err := refused(t, a, tok)
			if !strings.Contains(err.Error(), "fetch failed") {
				t.Errorf("refusal %q does not say the key set could not be fetched", err)
			}
			if !strings.Contains(logs.String(), "JWKS fetch failed") {
				t.Errorf("the failed fetch was not logged: %q", logs.String())
			}
		})
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var fetches atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fetches.Add(1) }))
	defer target.Close()
	redirect := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusFound))
	defer redirect.Close()
	// The default client, over http to a loopback address.
	a, err := clerkauth.New(issuer, &clerkauth.Options{AuthorizedParties: []string{party}, JWKSURL: redirect.URL + "/jwks"})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "302") {
		t.Fatalf("Refresh through a redirect = %v, want a 302 error", err)
	}
	if n := fetches.Load(); n != 0 {
		t.Errorf("the redirect target saw %d requests, want 0", n)
	}
}

func TestSecretKey(t *testing.T) {
	k := testKeys()["ed"]
	srv := newJWKSServer(t, k)
	srv.mu.Lock()
	srv.secret = "sk_test_secret"
	srv.mu.Unlock()
	var logs bytes.Buffer
	for _, c := range []struct {
		secret string
		ok     bool
	}{{"sk_test_wrong", false}, {"sk_test_secret", true}} {
		a := newAuthenticator(t, srv, clerkauth.Options{SecretKey: c.secret, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		err := a.Refresh(context.Background())
		if (err == nil) != c.ok {
			t.Errorf("SecretKey %q: Refresh = %v, want success %v", c.secret, err, c.ok)
		}
		if err != nil && strings.Contains(err.Error(), c.secret) {
			t.Errorf("the error shows the secret key: %v", err)
		}
	}
	if strings.Contains(logs.String(), "sk_test") {
		t.Errorf("the log shows the secret key: %s", logs.String())
	}
}

func TestContextCancelled(t *testing.T) {
	k := testKeys()["ed"]
	srv := newJWKSServer(t, k)
	gate := srv.block()
	a := newAuthenticator(t, srv, clerkauth.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	tok := k.mint(t, nil, claimsAt(time.Now()))
	go func() {
		_, err := a.Authenticate(ctx, tok)
		errc <- err
	}()
	cancel()
	err := <-errc
	close(gate)
	if !errors.Is(err, auth.ErrUnauthenticated) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Authenticate with a cancelled ctx = %v, want auth.ErrUnauthenticated and context.Canceled", err)
	}
	// The fetch itself went on for the others waiting on it.
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	accepted(t, a, k.mint(t, nil, claimsAt(time.Now())))
}

func TestFetchTimeout(t *testing.T) {
	k := testKeys()["ed"]
	srv := newJWKSServer(t, k)
	defer close(srv.block())
	a := newAuthenticator(t, srv, clerkauth.Options{FetchTimeout: time.Millisecond})
	if err := a.Refresh(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh against a hanging endpoint = %v, want context.DeadlineExceeded", err)
	}
}

func TestClerkClaims(t *testing.T) {
	keys := testKeys()
	clk := newClock()
	srv := newJWKSServer(t, keys["rsa"])
	a := newAuthenticator(t, srv, clerkauth.Options{Now: clk.Now, StaffClaim: "staff", StaffRoles: []string{"org:support"}, StaffOrg: "org_platform"})
	iat := clk.Now()
	// A session token as Clerk issues it (v2, with its extra claims).
	clerkV2 := map[string]any{
		"azp": party, "exp": iat.Unix() + 60, "fea": "o:reports", "fva": []int{0, -1}, "iat": iat.Unix(),
		"iss": issuer, "nbf": iat.Unix() - 10, "o": map[string]any{"fpm": "1", "id": "org_a", "per": "read", "rol": "member", "slg": "acme"},
		"sid": "sess_2", "sts": "active", "sub": "user_2", "v": 2,
	}
	for _, c := range []struct {
		name   string
		claims map[string]any
		want   auth.Principal
	}{
		{"clerk v2", clerkV2, auth.Principal{Subject: "user_2", Org: "org_a", Role: "org:member"}},
		{"no org", claimstest.With(clerkV2, map[string]any{"o": nil}), auth.Principal{Subject: "user_2"}},
		{"staff claim", claimstest.With(clerkV2, map[string]any{"staff": true}), auth.Principal{Subject: "user_2", Org: "org_a", Role: "org:member", Staff: true}},
		{"staff claim a string", claimstest.With(clerkV2, map[string]any{"staff": "true"}), auth.Principal{Subject: "user_2", Org: "org_a", Role: "org:member"}},
		{"staff role", claimstest.With(clerkV2, map[string]any{"o": map[string]any{"id": "org_platform", "rol": "support"}}), auth.Principal{Subject: "user_2", Org: "org_platform", Role: "org:support", Staff: true}},
		{"staff role elsewhere", claimstest.With(clerkV2, map[string]any{"o": map[string]any{"id": "org_a", "rol": "support"}}), auth.Principal{Subject: "user_2", Org: "org_a", Role: "org:support"}},
		{"admin of staff org", claimstest.With(clerkV2, map[string]any{"o": map[string]any{"id": "org_platform", "rol": "admin"}}), auth.Principal{Subject: "user_2", Org: "org_platform", Role: "org:admin"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.want.IssuedAt, c.want.ExpiresAt = iat, iat.Add(time.Minute)
			if diff := cmp.Diff(&c.want, accepted(t, a, keys["rsa"].mint(t, nil, c.claims))); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	ok := clerkauth.Options{AuthorizedParties: []string{party}}
	for name, c := range map[string]struct {
		issuer string
		opts   clerkauth.Options
	}{
		"no issuer":          {"", ok},
		"padded issuer":      {issuer + " ", ok},
		"no parties":         {issuer, clerkauth.Options{}},
		"empty party":        {issuer, clerkauth.Options{AuthorizedParties: []string{""}}},
		"leeway":             {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, Leeway: 2 * time.Minute}},
		"lifetime":           {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, MaxLifetime: 2 * time.Hour}},
		"reserved claim":     {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, StaffClaim: "org_role"}},
		"roles without org":  {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, StaffRoles: []string{"org:admin"}}},
		"refresh too often":  {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, RefreshInterval: time.Millisecond}},
		"key age < interval": {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, RefreshInterval: time.Hour, MaxKeyAge: time.Minute}},
		"negative timeout":   {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, FetchTimeout: -time.Second}},
		"plain http":         {"http://clerk.example.com", ok},
		"http JWKS":          {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, JWKSURL: "http://10.0.0.1/jwks"}},
		"relative JWKS":      {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, JWKSURL: "/jwks"}},
		"JWKS with userinfo": {issuer, clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, JWKSURL: "https://u:p@clerk.example.com/jwks"}},
	} {
		if _, err := clerkauth.New(c.issuer, &c.opts); err == nil {
			t.Errorf("%s: New succeeded, want an error", name)
		}
	}
	for _, u := range []string{"http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]/jwks", "https://api.clerk.com/v1/jwks"} {
		if _, err := clerkauth.New(issuer, &clerkauth.Options{AuthorizedParties: ok.AuthorizedParties, JWKSURL: u}); err != nil {
			t.Errorf("New with JWKSURL %s = %v", u, err)
		}
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	keys := testKeys()
	for _, name := range []string{"rsa", "ed"} {
		k := keys[name]
		b.Run(k.alg, func(b *testing.B) {
			srv := newJWKSServer(b, k)
			a := newAuthenticator(b, srv, clerkauth.Options{})
			if err := a.Refresh(context.Background()); err != nil {
				b.Fatal(err)
			}
			claimstest.Benchmark(b, a, k.mint(b, nil, claimsAt(time.Now())))
			if n := srv.fetches.Load(); n != 1 {
				b.Errorf("%d JWKS fetches during the benchmark, want 1", n)
			}
		})
	}
}
