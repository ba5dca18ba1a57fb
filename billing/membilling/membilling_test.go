package membilling_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/compatool/compatool/billing"
	"github.com/compatool/compatool/billing/billingtest"
	"github.com/compatool/compatool/billing/membilling"
)

type harness struct{ m *membilling.Meter }

func (h harness) Meter() billing.Meter { return h.m }
func (h harness) Recorded(_ *testing.T, customer string) []billing.Usage {
	return h.m.Records(customer)
}

func TestConformance(t *testing.T) {
	billingtest.RunConformanceTests(t, func(*testing.T) billingtest.Harness { return harness{membilling.New()} })
}

func TestFaultsAndConflicts(t *testing.T) {
	m, ctx := membilling.New(), context.Background()
	u := billing.Usage{ID: "run_1", Customer: "org_a", At: time.Unix(1, 0), AgentSeconds: 2, ToolCalls: 3}
	m.SetFault(&membilling.Fault{})
	if err := m.Record(ctx, u); !errors.Is(err, membilling.ErrInjected) || m.Records("org_a") != nil {
		t.Fatalf("Record under a fault = %v with %v held, want ErrInjected and nothing", err, m.Records("org_a"))
	}
	lost := errors.New("response lost")
	m.SetFault(&membilling.Fault{Err: lost, Committed: true})
	if err := m.Record(ctx, u); !errors.Is(err, lost) {
		t.Fatalf("Record under a committed fault = %v, want %v", err, lost)
	}
	m.SetFault(nil)
	if err := m.Record(ctx, u); err != nil { // the caller's retry
		t.Fatalf("retry = %v", err)
	}
	u.ToolCalls = 4
	if err := m.Record(ctx, u); !errors.Is(err, billing.ErrInvalid) {
		t.Errorf("conflicting record = %v, want billing.ErrInvalid", err)
	}
	if got, want := m.Totals("org_a"), (membilling.Totals{Runs: 1, AgentSeconds: 2, ToolCalls: 3}); got != want {
		t.Errorf("Totals = %+v, want %+v", got, want)
	}
}
