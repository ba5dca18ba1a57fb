package sandbox_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/compatool/compatool/sandbox"
)

// A Spec names the one endpoint the instance may reach; the driver sets
// COMPATOOL_MCP_URL, never the caller.
func ExampleSpec_Validate() {
	spec := sandbox.Spec{
		RunID:  "run_1",
		Image:  "sha256:0123",
		MCPURL: "http://127.0.0.1:8080/runs/run_1/mcp",
		Env:    map[string]string{sandbox.EnvMCPToken: "secret"},
		Limits: sandbox.Limits{Timeout: time.Minute},
	}
	fmt.Println(spec.Validate())
	spec.Env[sandbox.EnvMCPURL] = "http://elsewhere"
	fmt.Println(errors.Is(spec.Validate(), sandbox.ErrInvalidSpec))
	fmt.Println(spec.Limits.WithDefaults().PIDs)
	// Output:
	// <nil>
	// true
	// 256
}
