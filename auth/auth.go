// Package auth owns identity and tenancy: who is calling ([Principal]), which
// organisation's data they may touch ([Scope]), and how staff reach tenant
// data ([StaffRequest]).
//
// It keeps promises P10, P11 and P12 of DESIGN.md: identities come only from
// short-lived JWTs verified by an [Authenticator]; a [Scope] names exactly one
// organisation and is the only key the storage layer accepts for tenant data;
// staff scopes carry an operation kind and a reason so that the harness can
// write an audit record before any data is returned.
//
// # Errors
//
// Every failure to authenticate wraps [ErrUnauthenticated]; a request that is
// authenticated but not allowed wraps [ErrForbidden]. Test with errors.Is.
package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

var (
	// ErrUnauthenticated reports a missing, malformed, forged, expired or
	// otherwise unacceptable token. HTTP hosts answer it with 401.
	ErrUnauthenticated = errors.New("auth: unauthenticated")
	// ErrForbidden reports an authenticated principal asking for something
	// its identity does not allow (a staff operation without a reason, a
	// non-staff principal asking for staff access, staff trying to write).
	ErrForbidden = errors.New("auth: forbidden")
)

// OrgID identifies an organisation (a tenant). Results, submissions, runs and
// transcripts belong to exactly one organisation.
type OrgID string

// MaxTokenBytes bounds the size of a bearer token an [Authenticator] accepts;
// anything longer is refused before it is parsed.
const MaxTokenBytes = 8 << 10

// Principal is a verified identity. It is produced by an [Authenticator] from a
// token and never stored: only its subject and organisation are copied into
// records (submission owner, audit log).
type Principal struct {
	// Subject is the user id (the JWT "sub" claim).
	Subject string
	// Org is the active organisation of the session; empty when the token
	// carries none.
	Org OrgID
	// Role is the organisation role, e.g. "org:admin" or "org:member".
	Role string
	// Staff reports that the identity belongs to the platform's staff. It is
	// set only from a configured claim or role, never from org membership.
	Staff bool
	// IssuedAt and ExpiresAt are the token's "iat" and "exp".
	IssuedAt, ExpiresAt time.Time
}

// An Authenticator turns a bearer token into a [Principal].
//
// Implementations must be safe for concurrent use, must refuse tokens larger
// than [MaxTokenBytes] before parsing them, must verify the signature, issuer,
// audience (authorized party), "exp", "nbf" and "iat" with a bounded leeway,
// and must refuse unsigned tokens ("alg": "none"). Every refusal wraps
// [ErrUnauthenticated]. Authenticate must honour ctx when it does I/O (e.g. a
// key fetch) and must not retain the token after it returns.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*Principal, error)
}

// Operation is the kind of work a staff member does when reaching tenant data.
// Only the two kinds of the security page exist.
type Operation string

const (
	// OpSupport is access on a customer's request.
	OpSupport Operation = "support"
	// OpInfrastructure is access needed to operate the platform.
	OpInfrastructure Operation = "infrastructure"
)

// MaxReasonBytes bounds the reason of a staff request.
const MaxReasonBytes = 1024

// StaffAccess describes one staff access: who, to which org, for what and
// why. It travels inside a staff [Scope] and is what the audit record says.
type StaffAccess struct {
	Staff     string // the staff member's subject
	Org       OrgID  // the organisation whose data is read
	Operation Operation
	Reason    string
}

// Scope is the key to one organisation's data. Storage drivers refuse every
// tenant read or write whose Scope is the zero value. A Scope is minted from a
// verified [Principal] ([ScopeFor]), from a staff request ([StaffScope]), or
// for the harness's own processing of a run it already holds
// ([InternalScope]).
type Scope struct {
	org   OrgID
	staff *StaffAccess
}

// Org returns the organisation the scope opens; empty for the zero Scope.
func (s Scope) Org() OrgID { return s.org }

// Valid reports whether the scope names an organisation.
func (s Scope) Valid() bool { return s.org != "" }

// Staff returns the staff access the scope was minted for, or nil for an
// organisation's own scope.
func (s Scope) Staff() *StaffAccess {
	if s.staff == nil {
		return nil
	}
	a := *s.staff
	return &a
}

// String describes the scope for logs.
func (s Scope) String() string {
	if s.staff != nil {
		return fmt.Sprintf("staff %s → org %s (%s)", s.staff.Staff, s.org, s.staff.Operation)
	}
	return "org " + string(s.org)
}

// ScopeFor returns the scope of the principal's own organisation. It fails
// with [ErrForbidden] when the principal has no active organisation.
func ScopeFor(p *Principal) (Scope, error) {
	if p == nil || p.Subject == "" {
		return Scope{}, fmt.Errorf("%w: no principal", ErrUnauthenticated)
	}
	if p.Org == "" {
		return Scope{}, fmt.Errorf("%w: the session has no active organisation; select one in the sign-in client", ErrForbidden)
	}
	return Scope{org: p.Org}, nil
}

// InternalScope returns a scope for the platform's own processing of org's
// data: the harness executing, grading and storing a run it already holds, or
// the retention sweeper. It is never minted from a request; host code that
// answers requests uses [ScopeFor] or [StaffScope].
func InternalScope(org OrgID) Scope { return Scope{org: org} }

// StaffRequest asks for staff access to one organisation.
type StaffRequest struct {
	Org       OrgID
	Operation Operation
	Reason    string
}

// StaffScope returns a staff scope for req. The principal must be staff, the
// operation one of [OpSupport] or [OpInfrastructure], the reason non-empty and
// at most [MaxReasonBytes], and the target org named. A staff scope is
// read-only: the harness refuses it for submit, publish and erase.
func StaffScope(p *Principal, req StaffRequest) (Scope, error) {
	if p == nil || p.Subject == "" {
		return Scope{}, fmt.Errorf("%w: no principal", ErrUnauthenticated)
	}
	if !p.Staff {
		return Scope{}, fmt.Errorf("%w: %s is not staff", ErrForbidden, p.Subject)
	}
	if req.Operation != OpSupport && req.Operation != OpInfrastructure {
		return Scope{}, fmt.Errorf("%w: staff operation %q is not %q or %q", ErrForbidden, req.Operation, OpSupport, OpInfrastructure)
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		return Scope{}, fmt.Errorf("%w: staff access needs a reason", ErrForbidden)
	}
	if len(reason) > MaxReasonBytes || !utf8.ValidString(reason) {
		return Scope{}, fmt.Errorf("%w: staff reason must be valid UTF-8 of at most %d bytes", ErrForbidden, MaxReasonBytes)
	}
	if req.Org == "" {
		return Scope{}, fmt.Errorf("%w: staff access needs a target organisation", ErrForbidden)
	}
	return Scope{org: req.Org, staff: &StaffAccess{Staff: p.Subject, Org: req.Org, Operation: req.Operation, Reason: reason}}, nil
}
