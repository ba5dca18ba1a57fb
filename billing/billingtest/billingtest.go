// Package billingtest is the conformance suite every [billing.Meter] driver
// runs unchanged: membilling in memory, stripebilling against stripe-mock.
//
// It pins the billing side of promise P7 of DESIGN.md and the contract of
// [billing.Meter]: invalid records are refused with [billing.ErrInvalid]
// before anything reaches the backend; Record is idempotent on Usage.ID, also
// under concurrent retries; a done ctx fails the call and records nothing;
// one customer's usage never appears under another.
//
// A driver's test supplies a [Harness] and calls [RunConformanceTests]:
//
//	func TestConformance(t *testing.T) {
//		billingtest.RunConformanceTests(t, newHarness)
//	}
package billingtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compatool/compatool/billing"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Harness gives the suite one meter and a view of what its backend holds.
// Each call of the newHarness function passed to [RunConformanceTests]
// returns a fresh, empty instance.
type Harness interface {
	// Meter returns the meter under test.
	Meter() billing.Meter
	// Recorded returns every record the backend holds for customer, in any
	// order, each once however often it was sent.
	Recorded(t *testing.T, customer string) []billing.Usage
}

// at is the time of the suite's records: whole seconds, as every backend
// stores them.
var at = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// usage returns a valid record. Its values are whole numbers so that a backend
// that stores integers holds them exactly.
func usage(id, customer string) billing.Usage {
	return billing.Usage{ID: id, Customer: customer, At: at, AgentSeconds: 42, ToolCalls: 7}
}

var byID = cmpopts.SortSlices(func(a, b billing.Usage) bool { return a.ID < b.ID })

func checkRecorded(t *testing.T, h Harness, customer string, want []billing.Usage) {
	t.Helper()
	if diff := cmp.Diff(want, h.Recorded(t, customer), byID, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("records of %s (-want +got):\n%s", customer, diff)
	}
}

func record(t *testing.T, m billing.Meter, u billing.Usage) {
	t.Helper()
	if err := m.Record(context.Background(), u); err != nil {
		t.Fatalf("Record(%+v) = %v", u, err)
	}
}

// RunConformanceTests runs the suite against the harnesses newHarness makes.
func RunConformanceTests(t *testing.T, newHarness func(t *testing.T) Harness) {
	t.Helper()
	t.Run("Record", func(t *testing.T) { testRecord(t, newHarness(t)) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, newHarness(t)) })
	t.Run("Idempotent", func(t *testing.T) { testIdempotent(t, newHarness(t)) })
	t.Run("ConcurrentRetries", func(t *testing.T) { testConcurrentRetries(t, newHarness(t)) })
	t.Run("Context", func(t *testing.T) { testContext(t, newHarness(t)) })
	t.Run("Customers", func(t *testing.T) { testCustomers(t, newHarness(t)) })
}

func testRecord(t *testing.T, h Harness) {
	want := []billing.Usage{usage("run_1", "org_a"), usage("run_2", "org_a")}
	want[1].AgentSeconds, want[1].ToolCalls = 0, 0 // a run that used nothing is still billed
	for _, u := range want {
		record(t, h.Meter(), u)
	}
	checkRecorded(t, h, "org_a", want)
}

func testInvalid(t *testing.T, h Harness) {
	const customer = "org_invalid"
	long := strings.Repeat("x", 129)
	for name, change := range map[string]func(*billing.Usage){
		"no ID":            func(u *billing.Usage) { u.ID = "" },
		"long ID":          func(u *billing.Usage) { u.ID = long },
		"long customer":    func(u *billing.Usage) { u.Customer = long },
		"zero time":        func(u *billing.Usage) { u.At = time.Time{} },
		"negative seconds": func(u *billing.Usage) { u.AgentSeconds = -1 },
		"negative calls":   func(u *billing.Usage) { u.ToolCalls = -1 },
	} {
		t.Run(name, func(t *testing.T) {
			u := usage("run_invalid", customer)
			change(&u)
			if err := h.Meter().Record(context.Background(), u); !errors.Is(err, billing.ErrInvalid) {
				t.Errorf("Record(%+v) = %v, want billing.ErrInvalid", u, err)
			}
		})
	}
	u := usage("run_nocustomer", "")
	if err := h.Meter().Record(context.Background(), u); !errors.Is(err, billing.ErrInvalid) {
		t.Errorf("Record(no customer) = %v, want billing.ErrInvalid", err)
	}
	checkRecorded(t, h, customer, nil)
	checkRecorded(t, h, long, nil)
}

func testIdempotent(t *testing.T, h Harness) {
	u := usage("run_1", "org_a")
	for range 3 {
		record(t, h.Meter(), u)
	}
	checkRecorded(t, h, "org_a", []billing.Usage{u})

	// A different record under a held ID may be refused or ignored, but it
	// never replaces or adds to what was billed.
	changed := u
	changed.ToolCalls++
	_ = h.Meter().Record(context.Background(), changed)
	checkRecorded(t, h, "org_a", []billing.Usage{u})
}

func testConcurrentRetries(t *testing.T, h Harness) {
	const runs, retries = 8, 4
	var want []billing.Usage
	for i := range runs {
		want = append(want, usage(fmt.Sprintf("run_%d", i), "org_a"))
	}
	m := h.Meter()
	var wg sync.WaitGroup
	for _, u := range want {
		for range retries {
			wg.Go(func() {
				if err := m.Record(context.Background(), u); err != nil {
					t.Errorf("Record(%s) = %v", u.ID, err)
				}
			})
		}
	}
	wg.Wait()
	checkRecorded(t, h, "org_a", want)
}

func testContext(t *testing.T, h Harness) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), at)
	defer cancel2()
	for _, c := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		if err := h.Meter().Record(c.ctx, usage("run_ctx", "org_ctx")); !errors.Is(err, c.want) {
			t.Errorf("Record with a done ctx = %v, want %v", err, c.want)
		}
	}
	checkRecorded(t, h, "org_ctx", nil)
}

func testCustomers(t *testing.T, h Harness) {
	a := []billing.Usage{usage("run_a1", "org_a"), usage("run_a2", "org_a")}
	b := []billing.Usage{usage("run_b1", "org_b")}
	for _, u := range append(a, b...) {
		record(t, h.Meter(), u)
	}
	checkRecorded(t, h, "org_a", a)
	checkRecorded(t, h, "org_b", b)
	checkRecorded(t, h, "org_c", nil)
	checkRecorded(t, h, "org", nil) // no prefix matching
}
