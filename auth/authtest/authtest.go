// Package authtest is the conformance suite every [auth.Authenticator] driver
// runs unchanged: devauth now, clerkauth against a JWKS server with real keys.
//
// The suite pins promise P10 of DESIGN.md (only short-lived, correctly signed
// tokens of the configured issuer and authorized party are accepted; every
// forgery in its table of attacks is refused with [auth.ErrUnauthenticated])
// and the identity side of P11 and P12 (the organisation comes from Clerk's v1
// or v2 org claims alike; staff status only from the driver's configured
// staff rule, never from an organisation role; staff scopes need an operation
// and a reason).
//
// A driver's test supplies a [Harness] and calls [RunConformanceTests]:
//
//	func TestConformance(t *testing.T) {
//		authtest.RunConformanceTests(t, newHarness)
//	}
package authtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/google/go-cmp/cmp"
)

// Harness gives the suite one authenticator and the means to craft tokens
// for it. Each call of the newHarness function passed to
// [RunConformanceTests] returns a fresh, independent instance.
type Harness interface {
	// Authenticator returns the authenticator under test. Its clock must
	// read Now.
	Authenticator() auth.Authenticator
	// Mint signs a token carrying exactly claims with the key the
	// authenticator trusts. The default header is {"alg": <the key's
	// algorithm>, "typ": "JWT", "kid": <the key's id>}; header entries
	// override it, and an entry whose value is nil removes that field.
	// header never sets "alg".
	Mint(t *testing.T, header, claims map[string]any) string
	// Foreign is Mint with a key of the same algorithm that the
	// authenticator does not trust (as another instance would hold). Its
	// default header still names the trusted key's "kid".
	Foreign(t *testing.T, header, claims map[string]any) string
	// PublicKey returns the trusted public key, which an attacker knows: the
	// suite uses its encodings as HMAC secrets (key confusion).
	PublicKey() crypto.PublicKey
	// Issuer and AuthorizedParty are the accepted "iss" and one accepted
	// "azp".
	Issuer() string
	AuthorizedParty() string
	// Now is the authenticator's current time.
	Now() time.Time
	// Leeway is the clock skew the authenticator tolerates and MaxLifetime
	// the longest "exp" − "iat" it accepts.
	Leeway() time.Duration
	MaxLifetime() time.Duration
	// StaffClaims returns claims that, added to a valid token, make its
	// principal staff under the authenticator's configured staff rule (a
	// staff claim, or a staff role in the platform's organisation).
	StaffClaims() map[string]any
}

// Claim values the suite uses.
const (
	subject = "user_conformance"
	org     = auth.OrgID("org_conformance")
)

// RunConformanceTests runs the suite against the harnesses newHarness makes.
func RunConformanceTests(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	t.Run("Refused", func(t *testing.T) { testRefused(t, newHarness(t)) })
	t.Run("Valid", func(t *testing.T) { testValid(t, newHarness(t)) })
	t.Run("OrgForms", func(t *testing.T) { testOrgForms(t, newHarness(t)) })
	t.Run("NoOrg", func(t *testing.T) { testNoOrg(t, newHarness(t)) })
	t.Run("Staff", func(t *testing.T) { testStaff(t, newHarness(t)) })
	t.Run("StaffScope", func(t *testing.T) { testStaffScope(t, newHarness(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newHarness(t)) })
}

// lifetime is the lifetime of the suite's valid tokens: half the maximum.
func lifetime(h Harness) int64 { return max(1, int64(h.MaxLifetime()/time.Second/2)) }

// validClaims returns the claims of a token the authenticator must accept,
// with org claims in Clerk's v1 form.
func validClaims(h Harness) map[string]any {
	iat := h.Now().Unix()
	return map[string]any{
		"sub": subject, "iss": h.Issuer(), "azp": h.AuthorizedParty(),
		"sid": "sess_conformance", "iat": iat, "nbf": iat, "exp": iat + lifetime(h),
		"org_id": string(org), "org_role": "org:admin", "org_slug": "conformance",
	}
}

// with returns a copy of claims with changes applied; a nil value deletes.
func with(claims map[string]any, changes map[string]any) map[string]any {
	out := maps.Clone(claims)
	for k, v := range changes {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func mustAuthenticate(t *testing.T, h Harness, token string) *auth.Principal {
	t.Helper()
	p, err := h.Authenticator().Authenticate(context.Background(), token)
	if err != nil {
		t.Fatalf("Authenticate(valid token) = %v, want a principal", err)
	}
	if p == nil {
		t.Fatal("Authenticate(valid token) returned a nil principal and no error")
	}
	return p
}

func mustRefuse(t *testing.T, h Harness, token string) {
	t.Helper()
	p, err := h.Authenticator().Authenticate(context.Background(), token)
	if !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("Authenticate = (%+v, %v), want an error wrapping auth.ErrUnauthenticated", p, err)
	}
	if p != nil {
		t.Fatalf("Authenticate refused the token but returned principal %+v", p)
	}
}

func testRefused(t *testing.T, h Harness) {
	good := h.Mint(t, nil, validClaims(h))
	mustAuthenticate(t, h, good) // the attacks below start from an accepted token
	parts := strings.Split(good, ".")
	if len(parts) != 3 {
		t.Fatalf("Mint returned %d segments, want a compact JWS with 3", len(parts))
	}
	var header map[string]any
	if err := json.Unmarshal(decode(t, parts[0]), &header); err != nil {
		t.Fatalf("Mint header: %v", err)
	}
	alg, _ := header["alg"].(string)
	now := h.Now().Unix()
	leeway := int64(h.Leeway()/time.Second) + 1
	life := lifetime(h)
	maxLife := int64(h.MaxLifetime() / time.Second)

	// unsigned and HMAC tokens carry the trusted kid so that only the
	// algorithm is wrong.
	withAlg := func(a string) map[string]any {
		return map[string]any{"alg": a, "typ": "JWT", "kid": header["kid"]}
	}
	mint := func(changes map[string]any) string { return h.Mint(t, nil, with(validClaims(h), changes)) }

	type attack struct {
		name  string
		token string
	}
	attacks := []attack{
		{"empty", ""},
		{"garbage", "not a token"},
		{"three empty segments", ".."},
		{"truncated signature", good[:len(good)-8]},
		{"signature removed", parts[0] + "." + parts[1] + "."},
		{"two segments", parts[0] + "." + parts[1]},
		{"alg none without signature", encode(t, withAlg("none"), validClaims(h), nil)},
		{"alg none with original signature", encode(t, withAlg("none"), validClaims(h), nil) + parts[2]},
		{"alg None", encode(t, withAlg("None"), validClaims(h), nil)},
		{"tampered payload with original signature", parts[0] + "." +
			base64.RawURLEncoding.EncodeToString(mustJSON(t, with(validClaims(h), map[string]any{"org_id": "org_victim"}))) + "." + parts[2]},
		{"oversized", mint(map[string]any{"pad": strings.Repeat("x", auth.MaxTokenBytes)})},
		{"foreign key", h.Foreign(t, nil, validClaims(h))},
		{"foreign key with unknown kid", h.Foreign(t, map[string]any{"kid": "foreign"}, validClaims(h))},
		{"unknown kid", h.Mint(t, map[string]any{"kid": "unknown-key"}, validClaims(h))},
		{"unknown critical header", h.Mint(t, map[string]any{"crit": []string{"x-compatool"}, "x-compatool": true}, validClaims(h))},
		{"expired", mint(map[string]any{"exp": now - leeway - 60, "iat": now - leeway - 60 - life, "nbf": now - leeway - 60 - life})},
		{"not yet valid", mint(map[string]any{"nbf": now + leeway + 60})},
		{"issued in the future", mint(map[string]any{"iat": now + leeway + 60, "nbf": nil, "exp": now + leeway + 60 + life})},
		{"lifetime over maximum", mint(map[string]any{"exp": now + maxLife + 60})},
		{"expires before issued", mint(map[string]any{"iat": now, "exp": now - 1})},
		{"exp missing", mint(map[string]any{"exp": nil})},
		{"iat missing", mint(map[string]any{"iat": nil})},
		{"exp not a number", mint(map[string]any{"exp": "later"})},
		{"sub missing", mint(map[string]any{"sub": nil})},
		{"sub empty", mint(map[string]any{"sub": ""})},
		{"wrong issuer", mint(map[string]any{"iss": h.Issuer() + ".evil"})},
		{"issuer missing", mint(map[string]any{"iss": nil})},
		{"azp missing", mint(map[string]any{"azp": nil})},
		{"foreign azp", mint(map[string]any{"azp": "https://evil.example"})},
		{"azp extended", mint(map[string]any{"azp": h.AuthorizedParty() + ".evil.example"})},
		{"unknown claims version", mint(map[string]any{"v": 99})},
		{"org without role", mint(map[string]any{"org_role": nil})},
		{"v2 org without role", mint(map[string]any{"org_id": nil, "org_role": nil, "org_slug": nil,
			"v": 2, "o": map[string]any{"id": string(org)}})},
	}
	other := h.Mint(t, nil, with(validClaims(h), map[string]any{"sub": "user_other"}))
	attacks = append(attacks, attack{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(other, ".")[2]})
	for _, a := range []string{"RS256", "PS256", "ES256", "EdDSA", "HS256"} {
		if a == alg {
			continue
		}
		swapped := maps.Clone(header)
		swapped["alg"] = a
		attacks = append(attacks, attack{"alg " + a + " header on a " + alg + " signature",
			base64.RawURLEncoding.EncodeToString(mustJSON(t, swapped)) + "." + parts[1] + "." + parts[2]})
	}
	// A token genuinely signed with another algorithm, by the attacker's own
	// key, under the trusted kid: the key's algorithm, not the token's, must
	// decide (an RS256 token checked against an Ed25519 key and vice versa).
	for _, other := range otherAlgorithms(t) {
		if other.alg == alg {
			continue
		}
		attacks = append(attacks, attack{other.alg + " token signed by another key under the trusted kid",
			encode(t, withAlg(other.alg), validClaims(h), other.sign)})
	}
	for name, secret := range confusionSecrets(t, h.PublicKey()) {
		attacks = append(attacks, attack{"HS256 keyed with the public key (" + name + ")",
			encode(t, withAlg("HS256"), validClaims(h), func(in []byte) []byte {
				m := hmac.New(sha256.New, secret)
				m.Write(in)
				return m.Sum(nil)
			})})
	}

	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) { mustRefuse(t, h, a.token) })
	}
}

func testValid(t *testing.T, h Harness) {
	c := validClaims(h)
	p := mustAuthenticate(t, h, h.Mint(t, nil, c))
	want := &auth.Principal{
		Subject: subject, Org: org, Role: "org:admin",
		IssuedAt:  time.Unix(c["iat"].(int64), 0),
		ExpiresAt: time.Unix(c["exp"].(int64), 0),
	}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("principal (-want +got):\n%s", diff)
	}
	scope, err := auth.ScopeFor(p)
	if err != nil || scope.Org() != org || scope.Staff() != nil {
		t.Errorf("ScopeFor = (%v, %v), want the scope of %s", scope, err, org)
	}

	t.Run("unknown claims ignored", func(t *testing.T) {
		p := mustAuthenticate(t, h, h.Mint(t, nil, with(c, map[string]any{"fva": []int{1, -1}, "x-app": map[string]any{"a": 1}})))
		if p.Subject != subject || p.Org != org {
			t.Errorf("principal = %+v, want %s in %s", p, subject, org)
		}
	})
	if h.Leeway() >= 2*time.Second {
		t.Run("within leeway", func(t *testing.T) {
			now := h.Now().Unix()
			mustAuthenticate(t, h, h.Mint(t, nil, with(c, map[string]any{"exp": now - 1, "iat": now - 1 - lifetime(h), "nbf": nil})))
			mustAuthenticate(t, h, h.Mint(t, nil, with(c, map[string]any{"nbf": now + 1, "iat": now + 1, "exp": now + 1 + lifetime(h)})))
		})
	}
}

func testOrgForms(t *testing.T, h Harness) {
	v1 := validClaims(h)
	v2 := with(v1, map[string]any{"org_id": nil, "org_role": nil, "org_slug": nil,
		"v": 2, "o": map[string]any{"id": string(org), "rol": "admin", "slg": "conformance"}})
	p1 := mustAuthenticate(t, h, h.Mint(t, nil, v1))
	p2 := mustAuthenticate(t, h, h.Mint(t, nil, v2))
	if diff := cmp.Diff(p1, p2); diff != "" {
		t.Errorf("v1 and v2 org claims give different principals (-v1 +v2):\n%s", diff)
	}
	if p2.Org != org || p2.Role != "org:admin" {
		t.Errorf("v2 principal = %+v, want org %s role org:admin", p2, org)
	}
	member := with(v2, map[string]any{"o": map[string]any{"id": string(org), "rol": "member"}})
	if p := mustAuthenticate(t, h, h.Mint(t, nil, member)); p.Role != "org:member" {
		t.Errorf("v2 role %q, want org:member", p.Role)
	}
}

func testNoOrg(t *testing.T, h Harness) {
	v1 := with(validClaims(h), map[string]any{"org_id": nil, "org_role": nil, "org_slug": nil})
	for name, claims := range map[string]map[string]any{"v1": v1, "v2": with(v1, map[string]any{"v": 2})} {
		t.Run(name, func(t *testing.T) {
			p := mustAuthenticate(t, h, h.Mint(t, nil, claims))
			if p.Subject != subject || p.Org != "" || p.Role != "" || p.Staff {
				t.Errorf("principal = %+v, want %s with no organisation", p, subject)
			}
			if _, err := auth.ScopeFor(p); !errors.Is(err, auth.ErrForbidden) {
				t.Errorf("ScopeFor(no org) = %v, want auth.ErrForbidden", err)
			}
		})
	}
}

func testStaff(t *testing.T, h Harness) {
	for _, role := range []string{"org:admin", "org:member", "org:owner"} {
		t.Run("not staff as "+role, func(t *testing.T) {
			p := mustAuthenticate(t, h, h.Mint(t, nil, with(validClaims(h), map[string]any{"org_role": role})))
			if p.Staff {
				t.Errorf("an %s of %s is staff; staff must come only from the configured rule", role, org)
			}
		})
	}
	t.Run("configured rule", func(t *testing.T) {
		p := mustAuthenticate(t, h, h.Mint(t, nil, with(validClaims(h), h.StaffClaims())))
		if !p.Staff {
			t.Fatalf("principal with StaffClaims %v is not staff: %+v", h.StaffClaims(), p)
		}
		scope, err := auth.StaffScope(p, auth.StaffRequest{Org: "org_customer", Operation: auth.OpSupport, Reason: " ticket 42 "})
		if err != nil {
			t.Fatalf("StaffScope = %v", err)
		}
		want := &auth.StaffAccess{Staff: subject, Org: "org_customer", Operation: auth.OpSupport, Reason: "ticket 42"}
		if diff := cmp.Diff(want, scope.Staff()); diff != "" || scope.Org() != "org_customer" {
			t.Errorf("staff scope %v (-want +got):\n%s", scope, diff)
		}
	})
	t.Run("foreign staff token", func(t *testing.T) {
		mustRefuse(t, h, h.Foreign(t, nil, with(validClaims(h), h.StaffClaims())))
	})
}

func testStaffScope(t *testing.T, h Harness) {
	staff := mustAuthenticate(t, h, h.Mint(t, nil, with(validClaims(h), h.StaffClaims())))
	member := mustAuthenticate(t, h, h.Mint(t, nil, validClaims(h)))
	ok := auth.StaffRequest{Org: "org_customer", Operation: auth.OpInfrastructure, Reason: "disk repair"}
	cases := []struct {
		name string
		p    *auth.Principal
		req  auth.StaffRequest
	}{
		{"non-staff", member, ok},
		{"no reason", staff, auth.StaffRequest{Org: ok.Org, Operation: ok.Operation}},
		{"blank reason", staff, auth.StaffRequest{Org: ok.Org, Operation: ok.Operation, Reason: " \t\n"}},
		{"reason too long", staff, auth.StaffRequest{Org: ok.Org, Operation: ok.Operation, Reason: strings.Repeat("r", auth.MaxReasonBytes+1)}},
		{"bad operation", staff, auth.StaffRequest{Org: ok.Org, Operation: "curiosity", Reason: ok.Reason}},
		{"no operation", staff, auth.StaffRequest{Org: ok.Org, Reason: ok.Reason}},
		{"no target org", staff, auth.StaffRequest{Operation: ok.Operation, Reason: ok.Reason}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if s, err := auth.StaffScope(c.p, c.req); !errors.Is(err, auth.ErrForbidden) {
				t.Errorf("StaffScope = (%v, %v), want auth.ErrForbidden", s, err)
			}
		})
	}
	if s, err := auth.StaffScope(staff, ok); err != nil || s.Staff() == nil {
		t.Errorf("StaffScope(valid request) = (%v, %v), want a staff scope", s, err)
	}
}

func testConcurrent(t *testing.T, h Harness) {
	const workers, rounds = 8, 25
	good := make([]string, workers)
	for i := range good {
		good[i] = h.Mint(t, nil, with(validClaims(h), map[string]any{"sub": fmt.Sprintf("user_%d", i)}))
	}
	forged := h.Foreign(t, nil, validClaims(h))
	a := h.Authenticator()
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for range rounds {
				p, err := a.Authenticate(context.Background(), good[i])
				if err != nil || p.Subject != fmt.Sprintf("user_%d", i) {
					t.Errorf("worker %d: Authenticate(valid) = (%+v, %v)", i, p, err)
					return
				}
				if _, err := a.Authenticate(context.Background(), forged); !errors.Is(err, auth.ErrUnauthenticated) {
					t.Errorf("worker %d: Authenticate(forged) = %v, want auth.ErrUnauthenticated", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// signingKey signs with one asymmetric algorithm.
type signingKey struct {
	alg  string
	sign func([]byte) []byte
}

// otherKeys are generated once: RSA key generation is slow.
var otherKeys = sync.OnceValues(func() ([]signingKey, error) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	_, dk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return []signingKey{
		{"RS256", func(in []byte) []byte {
			sum := sha256.Sum256(in)
			sig, err := rsa.SignPKCS1v15(nil, rk, crypto.SHA256, sum[:])
			if err != nil {
				panic(err)
			}
			return sig
		}},
		{"ES256", func(in []byte) []byte {
			sum := sha256.Sum256(in)
			r, s, err := ecdsa.Sign(rand.Reader, ek, sum[:])
			if err != nil {
				panic(err)
			}
			return append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
		}},
		{"EdDSA", func(in []byte) []byte { return ed25519.Sign(dk, in) }},
	}, nil
})

func otherAlgorithms(t *testing.T) []signingKey {
	t.Helper()
	keys, err := otherKeys()
	if err != nil {
		t.Fatalf("generate attacker keys: %v", err)
	}
	return keys
}

// confusionSecrets returns the encodings of pub an attacker might try as an
// HMAC secret against a verifier that lets the token choose the algorithm.
func confusionSecrets(t *testing.T, pub crypto.PublicKey) map[string][]byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("PublicKey: %v", err)
	}
	out := map[string][]byte{
		"PKIX DER": der,
		"PKIX PEM": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
	}
	switch k := pub.(type) {
	case ed25519.PublicKey:
		out["raw"] = k
	case *rsa.PublicKey:
		p1 := x509.MarshalPKCS1PublicKey(k)
		out["PKCS1 DER"] = p1
		out["PKCS1 PEM"] = pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: p1})
	}
	return out
}

func encode(t *testing.T, header, claims map[string]any, sign func([]byte) []byte) string {
	t.Helper()
	tok, err := Encode(header, claims, func(in []byte) ([]byte, error) {
		if sign == nil {
			return nil, nil
		}
		return sign(in), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func decode(t *testing.T, seg string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatalf("segment %q: %v", seg, err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Encode returns the compact JWS serialization of header and claims. sign
// receives the signing input (the base64url header and claims joined by ".")
// and returns the raw signature; a nil signature leaves the third segment
// empty, as in an unsigned token. Harness implementations use it to mint
// tokens with exactly the header and claims the suite asks for.
func Encode(header, claims map[string]any, sign func(signingInput []byte) ([]byte, error)) (string, error) {
	h, err := json.Marshal(header)
	if err != nil {
		return "", fmt.Errorf("authtest: encode header: %w", err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("authtest: encode claims: %w", err)
	}
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sig, err := sign([]byte(in))
	if err != nil {
		return "", fmt.Errorf("authtest: sign: %w", err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
