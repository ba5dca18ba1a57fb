package auth_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/compatool/compatool/auth"
	"github.com/google/go-cmp/cmp"
)

func TestScopeFor(t *testing.T) {
	for _, c := range []struct {
		name string
		p    *auth.Principal
		want error
	}{
		{"nil principal", nil, auth.ErrUnauthenticated},
		{"no subject", &auth.Principal{Org: "org_a"}, auth.ErrUnauthenticated},
		{"no org", &auth.Principal{Subject: "u"}, auth.ErrForbidden},
		{"staff without org", &auth.Principal{Subject: "u", Staff: true}, auth.ErrForbidden},
	} {
		if s, err := auth.ScopeFor(c.p); !errors.Is(err, c.want) || s.Valid() {
			t.Errorf("%s: ScopeFor = (%v, %v), want an invalid scope and %v", c.name, s, err, c.want)
		}
	}
	s, err := auth.ScopeFor(&auth.Principal{Subject: "u", Org: "org_a", Role: "org:admin", Staff: true})
	if err != nil || !s.Valid() || s.Org() != "org_a" || s.Staff() != nil || s.String() != "org org_a" {
		t.Errorf("ScopeFor(member of org_a) = (%v, %v), want the own scope of org_a without staff access", s, err)
	}
}

func TestInternalScope(t *testing.T) {
	s := auth.InternalScope("org_a")
	if !s.Valid() || s.Org() != "org_a" || s.Staff() != nil {
		t.Errorf("InternalScope(org_a) = %v, want a plain scope of org_a", s)
	}
	if auth.InternalScope("").Valid() || (auth.Scope{}).Valid() {
		t.Error("a scope without an organisation is valid")
	}
}

func TestStaffScope(t *testing.T) {
	staff := &auth.Principal{Subject: "user_staff", Staff: true}
	ok := auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "  ticket 7\n"}
	for _, c := range []struct {
		name string
		p    *auth.Principal
		req  auth.StaffRequest
		want error
	}{
		{"nil principal", nil, ok, auth.ErrUnauthenticated},
		{"no subject", &auth.Principal{Staff: true}, ok, auth.ErrUnauthenticated},
		{"not staff", &auth.Principal{Subject: "u", Org: "org_a", Role: "org:admin"}, ok, auth.ErrForbidden},
		{"no reason", staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport}, auth.ErrForbidden},
		{"blank reason", staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "\t "}, auth.ErrForbidden},
		{"long reason", staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: strings.Repeat("r", auth.MaxReasonBytes+1)}, auth.ErrForbidden},
		{"invalid UTF-8", staff, auth.StaffRequest{Org: "org_a", Operation: auth.OpSupport, Reason: "\xff"}, auth.ErrForbidden},
		{"bad operation", staff, auth.StaffRequest{Org: "org_a", Operation: "audit", Reason: "x"}, auth.ErrForbidden},
		{"no org", staff, auth.StaffRequest{Operation: auth.OpInfrastructure, Reason: "x"}, auth.ErrForbidden},
	} {
		if s, err := auth.StaffScope(c.p, c.req); !errors.Is(err, c.want) || s.Valid() {
			t.Errorf("%s: StaffScope = (%v, %v), want an invalid scope and %v", c.name, s, err, c.want)
		}
	}

	s, err := auth.StaffScope(staff, ok)
	if err != nil {
		t.Fatalf("StaffScope(valid) = %v", err)
	}
	want := &auth.StaffAccess{Staff: "user_staff", Org: "org_a", Operation: auth.OpSupport, Reason: "ticket 7"}
	if diff := cmp.Diff(want, s.Staff()); diff != "" {
		t.Errorf("Staff() (-want +got):\n%s", diff)
	}
	if s.Org() != "org_a" || s.String() != "staff user_staff → org org_a (support)" {
		t.Errorf("scope = %q in %s", s.String(), s.Org())
	}
	s.Staff().Reason = "changed"
	if s.Staff().Reason != "ticket 7" {
		t.Error("Staff() returns the scope's own StaffAccess; callers can rewrite the audit reason")
	}
}
