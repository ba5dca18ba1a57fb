package claims_test

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/compatool/compatool/auth/internal/claims"
)

// A driver verifies the signature, then hands the claims over in three
// steps: the registered claims, the organisation, the staff rule.
func Example() {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	policy, err := claims.NewPolicy(claims.Policy{
		Issuer:            "https://clerk.example.test",
		AuthorizedParties: []string{"https://app.example.test"},
		StaffRoles:        []string{"org:support"},
		StaffOrg:          "org_platform",
		Now:               func() time.Time { return now },
	})
	if err != nil {
		panic(err)
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal([]byte(`{"v": 2, "o": {"id": "org_platform", "rol": "support"}}`), &raw)

	iat, exp := now.Unix(), now.Unix()+60
	p, err := policy.Principal(claims.Registered{
		Subject: "user_1", Issuer: "https://clerk.example.test", AuthorizedParty: "https://app.example.test",
		IssuedAt: &iat, Expiry: &exp,
	})
	if err != nil {
		panic(err)
	}
	org, err := claims.DecodeOrg(raw)
	if err != nil {
		panic(err)
	}
	if p.Org, p.Role, err = org.Active(); err != nil {
		panic(err)
	}
	p.Staff = policy.Staff(p, raw)
	fmt.Println(p.Subject, p.Org, p.Role, "staff:", p.Staff)

	exp = iat + 2*3600
	_, err = policy.Principal(claims.Registered{Subject: "user_1", Issuer: "https://clerk.example.test", AuthorizedParty: "https://app.example.test", IssuedAt: &iat, Expiry: &exp})
	fmt.Println(err)
	// Output:
	// user_1 org_platform org:support staff: true
	// token lifetime 2h0m0s exceeds 10m0s
}
