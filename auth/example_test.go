package auth_test

import (
	"errors"
	"fmt"

	"github.com/compatool/compatool/auth"
)

// A principal opens only its own organisation; staff need an operation and
// a reason, and their scope says so.
func Example() {
	member := &auth.Principal{Subject: "user_1", Org: "org_a", Role: "org:member"}
	s, _ := auth.ScopeFor(member)
	fmt.Println(s)

	staff := &auth.Principal{Subject: "user_ops", Org: "org_ops", Staff: true}
	_, err := auth.StaffScope(staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport})
	fmt.Println(errors.Is(err, auth.ErrForbidden))

	s, _ = auth.StaffScope(staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "ticket 42"})
	fmt.Println(s, "because", s.Staff().Reason)
	// Output:
	// org org_a
	// true
	// staff user_ops → org org_a (support) because ticket 42
}
