// Package membilling is an in-memory [billing.Meter]: a usage ledger for
// tests, examples and single-process deployments that bill elsewhere.
//
// It keeps the billing half of promise P7 of DESIGN.md: a record carries
// counts and ids only ([billing.Usage]), and the ledger is idempotent on
// Usage.ID, so a retried Record never double-counts. It passes the
// conformance suite in billingtest.
//
// # Errors
//
// Record returns an error wrapping [billing.ErrInvalid] for a record that
// fails [billing.Usage.Validate] or that differs from the record already held
// under its ID (retrying it cannot succeed), ctx.Err() when ctx is done, and
// the injected error of a [Fault].
package membilling

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/compatool/compatool/billing"
)

// Meter is an in-memory usage ledger. The zero value is not usable; call New.
// It is safe for concurrent use.
type Meter struct {
	mu         sync.Mutex
	byID       map[string]billing.Usage
	byCustomer map[string][]string // ids in the order they were first recorded
	fault      *Fault
}

var _ billing.Meter = (*Meter)(nil)

// New returns an empty ledger.
func New() *Meter {
	return &Meter{byID: map[string]billing.Usage{}, byCustomer: map[string][]string{}}
}

// ErrInjected is the default error of a [Fault].
var ErrInjected = errors.New("membilling: injected fault")

// Fault makes Record fail, for testing how callers handle a meter that is
// down or whose answer was lost.
type Fault struct {
	// Err is what Record returns; ErrInjected when nil.
	Err error
	// Committed records the usage before returning Err: the ambiguous
	// failure of a call whose response was lost, after which a retry must
	// not double-count.
	Committed bool
	// Match selects the records that fail; nil selects all.
	Match func(billing.Usage) bool
}

// SetFault installs f for every later Record; nil removes it.
func (m *Meter) SetFault(f *Fault) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f != nil {
		c := *f
		if c.Err == nil {
			c.Err = ErrInjected
		}
		f = &c
	}
	m.fault = f
}

// Record adds u to the ledger unless a record with its ID is already held.
// Recording an identical record again succeeds and counts once; a different
// record under a held ID fails with [billing.ErrInvalid] and changes nothing.
func (m *Meter) Record(ctx context.Context, u billing.Usage) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := u.Validate(); err != nil {
		return fmt.Errorf("membilling: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fault
	if f != nil && (f.Match == nil || f.Match(u)) {
		if !f.Committed {
			return f.Err
		}
	} else {
		f = nil
	}
	if held, ok := m.byID[u.ID]; ok {
		if !held.At.Equal(u.At) || held.Customer != u.Customer || held.AgentSeconds != u.AgentSeconds || held.ToolCalls != u.ToolCalls {
			return fmt.Errorf("membilling: %w: usage %q is already recorded with different values; use a fresh ID per run", billing.ErrInvalid, u.ID)
		}
	} else {
		m.byID[u.ID] = u
		m.byCustomer[u.Customer] = append(m.byCustomer[u.Customer], u.ID)
	}
	if f != nil {
		return f.Err
	}
	return nil
}

// Records returns the customer's records in the order they were first
// recorded; nil when there are none.
func (m *Meter) Records(customer string) []billing.Usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := m.byCustomer[customer]
	if len(ids) == 0 {
		return nil
	}
	out := make([]billing.Usage, len(ids))
	for i, id := range ids {
		out[i] = m.byID[id]
	}
	return out
}

// Totals sums one customer's usage.
type Totals struct {
	Runs         int
	AgentSeconds float64
	ToolCalls    int
}

// Totals returns the sums of the customer's records.
func (m *Meter) Totals(customer string) Totals {
	var t Totals
	for _, u := range m.Records(customer) {
		t.Runs++
		t.AgentSeconds += u.AgentSeconds
		t.ToolCalls += u.ToolCalls
	}
	return t
}
