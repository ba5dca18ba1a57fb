package devauth_test

import (
	"context"
	"fmt"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
)

func Example() {
	authority, err := devauth.Generate(&devauth.Options{StaffClaim: "staff"})
	if err != nil {
		panic(err)
	}
	token, err := authority.Issue(devauth.Claims{Subject: "user_1", Org: "org_acme", Role: "org:admin", V2: true})
	if err != nil {
		panic(err)
	}
	p, err := authority.Authenticate(context.Background(), token)
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Subject, p.Org, p.Role, "staff:", p.Staff)

	scope, _ := auth.ScopeFor(p)
	fmt.Println(scope)

	_, err = auth.StaffScope(p, auth.StaffRequest{Org: "org_other", Operation: auth.OpSupport, Reason: "curious"})
	fmt.Println(err)

	_, err = authority.Authenticate(context.Background(), token[:len(token)-4])
	fmt.Println(err != nil)
	// Output:
	// user_1 org_acme org:admin staff: false
	// org org_acme
	// auth: forbidden: user_1 is not staff
	// true
}
