package clerkauth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/compatool/compatool/auth/clerkauth"
	"github.com/compatool/compatool/auth/devauth"
)

// A Clerk instance is stood in for by devauth, which issues tokens of the
// same shape and serves its key as a JWKS. In production, pass the Frontend
// API URL as the issuer and leave JWKSURL empty.
func Example() {
	const issuer = "https://clerk.example.test"
	clerk, err := devauth.Generate(&devauth.Options{Issuer: issuer, AuthorizedParties: []string{"https://app.example.test"}})
	if err != nil {
		panic(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(clerk.PublicJWKS()) }))
	defer jwks.Close()

	a, err := clerkauth.New(issuer, &clerkauth.Options{
		AuthorizedParties: []string{"https://app.example.test"},
		JWKSURL:           jwks.URL + "/.well-known/jwks.json",
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if err := a.Refresh(ctx); err != nil { // fail fast on a wrong URL
		panic(err)
	}

	token, err := clerk.Issue(devauth.Claims{Subject: "user_1", Org: "org_acme", Role: "org:admin", V2: true})
	if err != nil {
		panic(err)
	}
	p, err := a.Authenticate(ctx, token)
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Subject, p.Org, p.Role, p.ExpiresAt.Sub(p.IssuedAt))

	_, err = a.Authenticate(ctx, token[:len(token)-4])
	fmt.Println(err != nil)
	// Output:
	// user_1 org_acme org:admin 1m0s
	// true
}
