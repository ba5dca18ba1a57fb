package membilling_test

import (
	"context"
	"fmt"
	"time"

	"github.com/compatool/compatool/billing"
	"github.com/compatool/compatool/billing/membilling"
)

func Example() {
	m := membilling.New()
	ctx := context.Background()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	run := billing.Usage{ID: "run_1", Customer: "org_acme", At: at, AgentSeconds: 12.5, ToolCalls: 9}

	fmt.Println(m.Record(ctx, run))
	fmt.Println(m.Record(ctx, run)) // a retry counts once
	fmt.Println(m.Record(ctx, billing.Usage{ID: "run_2", Customer: "org_acme", At: at, AgentSeconds: 3, ToolCalls: 1}))
	fmt.Println(m.Record(ctx, billing.Usage{ID: "run_3", Customer: "org_acme"}))
	fmt.Printf("%+v\n", m.Totals("org_acme"))
	// Output:
	// <nil>
	// <nil>
	// <nil>
	// membilling: billing: invalid usage record: At is zero
	// {Runs:2 AgentSeconds:15.5 ToolCalls:10}
}
