package clerkauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math/big"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseJWKS(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	rsaJWK := func(bits int) map[string]any {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"kty": "RSA", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes()),
			"d": b64(k.D.Bytes()), "p": b64(k.Primes[0].Bytes()), "q": b64(k.Primes[1].Bytes())}
	}
	public := func(m map[string]any, extra map[string]any) map[string]any {
		out := maps.Clone(m)
		for _, private := range []string{"d", "p", "q"} {
			delete(out, private)
		}
		maps.Copy(out, extra)
		return out
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	ed := map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64(pub)}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsa2048, rsa1024 := rsaJWK(2048), rsaJWK(1024)
	rsaPrivate := maps.Clone(rsa2048)
	rsaPrivate["kid"] = "rsa-private"

	keys := []map[string]any{
		public(rsa2048, map[string]any{"kid": "rsa", "alg": "RS256", "use": "sig"}),
		public(rsa2048, map[string]any{"kid": "rsa-no-alg"}),
		public(ed, map[string]any{"kid": "ed", "alg": "EdDSA", "use": "sig"}),
		public(ed, map[string]any{"kid": "ed-no-alg"}),
		public(rsa1024, map[string]any{"kid": "rsa-small", "alg": "RS256"}),
		public(rsa2048, map[string]any{"kid": "rsa-as-ps256", "alg": "PS256"}),
		public(ed, map[string]any{"kid": "ed-as-rs256", "alg": "RS256"}),
		public(rsa2048, map[string]any{"kid": "rsa-enc", "use": "enc"}),
		public(rsa2048, map[string]any{"alg": "RS256"}), // no kid
		rsaPrivate,
		public(ed, map[string]any{"kid": "ed-private", "d": b64(priv.Seed())}),
		{"kty": "EC", "crv": "P-256", "x": b64(ec.X.FillBytes(make([]byte, 32))), "y": b64(ec.Y.FillBytes(make([]byte, 32))), "kid": "ec", "alg": "ES256"},
		{"kty": "oct", "k": b64([]byte("secret")), "kid": "hmac", "alg": "HS256"},
		{"kty": "future", "kid": "future"},
		public(rsa2048, map[string]any{"kid": "dup"}),
		public(ed, map[string]any{"kid": "dup"}),
	}
	body, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseJWKS(body)
	if err != nil {
		t.Fatal(err)
	}
	algs := map[string]string{}
	for kid, k := range got {
		algs[kid] = k.Algorithm
	}
	want := map[string]string{"rsa": "RS256", "rsa-no-alg": "RS256", "ed": "EdDSA", "ed-no-alg": "EdDSA"}
	if diff := cmp.Diff(want, algs); diff != "" {
		t.Errorf("usable keys (-want +got):\n%s\nall kids: %v", diff, slices.Sorted(maps.Keys(got)))
	}

	for name, body := range map[string]string{
		"empty":   `{"keys":[]}`,
		"no keys": `{}`,
		"array":   `[]`,
		"hmac":    `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}`,
	} {
		if _, err := parseJWKS([]byte(body)); err == nil {
			t.Errorf("%s: parseJWKS succeeded", name)
		}
	}
}
