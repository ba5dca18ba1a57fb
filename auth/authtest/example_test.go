package authtest_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/compatool/compatool/auth/authtest"
)

// A harness mints tokens with exactly the header and claims the suite asks
// for; Encode does the serialization and the harness supplies the signature.
func ExampleEncode() {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	token, err := authtest.Encode(
		map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": "k1"},
		map[string]any{"sub": "user_1", "org_id": "org_acme"},
		func(in []byte) ([]byte, error) { return ed25519.Sign(key, in), nil },
	)
	if err != nil {
		panic(err)
	}
	parts := strings.Split(token, ".")
	header, _ := base64.RawURLEncoding.DecodeString(parts[0])
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	fmt.Println(string(header))
	fmt.Println(string(claims))
	fmt.Println(ed25519.Verify(key.Public().(ed25519.PublicKey), []byte(parts[0]+"."+parts[1]), sig))
	// Output:
	// {"alg":"EdDSA","kid":"k1","typ":"JWT"}
	// {"org_id":"org_acme","sub":"user_1"}
	// true
}
