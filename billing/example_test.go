package billing_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/compatool/compatool/billing"
)

// A usage record carries ids and counts only; the run id makes Record
// idempotent.
func ExampleUsage_Validate() {
	u := billing.Usage{ID: "run_1", Customer: "org_a", At: time.Now(), AgentSeconds: 12.5, ToolCalls: 7}
	fmt.Println(u.Validate())
	u.Customer = ""
	fmt.Println(errors.Is(u.Validate(), billing.ErrInvalid))
	// Output:
	// <nil>
	// true
}
