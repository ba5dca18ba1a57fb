package retention_test

import (
	"fmt"
	"time"

	"github.com/compatool/compatool/retention"
)

// The security page's data table, as the code keeps it.
func Example() {
	for _, c := range retention.Table {
		fmt.Printf("%s: %s\n", c.Data, c.Retention)
	}
	fmt.Println(retention.ArchiveCutoff(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)).Format("2006-01-02"))
	// Output:
	// Submission metadata (agent name, owner ID, timestamps): Indefinite, deletable on request
	// Run transcripts: 12 months, then archived
	// Task content (private set): Active month only; plaintext published on retirement
	// Authentication tokens: Per Clerk policy
	// Billing data: Per Stripe policy
	// 2025-11-25
}
