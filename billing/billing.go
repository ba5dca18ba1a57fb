// Package billing records usage with a [Meter]. Billing data stays with the
// payment provider (P7): a usage record carries counts and ids only, never
// task content, transcripts or tokens.
//
// Drivers: membilling (an in-memory ledger) and stripebilling (Stripe Billing
// Meter Events). Both pass the conformance suite in billingtest.
//
// # Errors
//
// [ErrInvalid] for a record that fails [Usage.Validate]; any other error is
// the backend's and may be retried: Record is idempotent.
package billing

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrInvalid reports a usage record that fails validation.
var ErrInvalid = errors.New("billing: invalid usage record")

// Usage is the usage of one run.
type Usage struct {
	// ID is the idempotency key, normally the run id. Recording the same ID
	// twice counts once.
	ID string
	// Customer is the billed organisation's id.
	Customer string
	At       time.Time
	// AgentSeconds is the sandbox's wall-clock time.
	AgentSeconds float64
	// ToolCalls counts the calls made through the gateway.
	ToolCalls int
}

// Validate reports whether u can be recorded.
func (u Usage) Validate() error {
	switch {
	case u.ID == "" || len(u.ID) > 128:
		return fmt.Errorf("%w: ID must be 1 to 128 bytes", ErrInvalid)
	case u.Customer == "" || len(u.Customer) > 128:
		return fmt.Errorf("%w: Customer must be 1 to 128 bytes", ErrInvalid)
	case u.At.IsZero():
		return fmt.Errorf("%w: At is zero", ErrInvalid)
	case u.AgentSeconds < 0 || u.ToolCalls < 0:
		return fmt.Errorf("%w: negative usage", ErrInvalid)
	}
	return nil
}

// A Meter records usage. Implementations must be safe for concurrent use,
// honour ctx, and be idempotent on Usage.ID: a retried Record after an
// ambiguous failure never double-counts.
type Meter interface {
	Record(ctx context.Context, u Usage) error
}
