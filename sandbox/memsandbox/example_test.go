package memsandbox_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/compatool/compatool/sandbox"
	"github.com/compatool/compatool/sandbox/memsandbox"
)

func Example() {
	s := memsandbox.New(map[string]memsandbox.Agent{
		"hello": func(ctx context.Context, env *memsandbox.Env) int {
			fmt.Fprintln(env.Stdout(), "run", env.Getenv(sandbox.EnvRunID), "gateway", env.Getenv(sandbox.EnvMCPURL))
			// Anything but the MCP URL is refused before a packet is sent.
			_, err := env.HTTPClient().Get("http://169.254.169.254/latest/meta-data/")
			fmt.Fprintln(env.Stdout(), "metadata service denied:", errors.Is(err, memsandbox.ErrEgressDenied))
			return 3
		},
	}, nil)

	ctx := context.Background()
	inst, err := s.Start(ctx, sandbox.Spec{
		RunID:  "run-1",
		Image:  "hello",
		Env:    map[string]string{sandbox.EnvRunID: "run-1"},
		MCPURL: "http://127.0.0.1:8931/mcp",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	exit, _ := inst.Wait(ctx)
	if err := inst.Destroy(ctx); err != nil {
		fmt.Println(err)
	}
	fmt.Printf("exit %d (%s)\n%s", exit.Code, exit.Reason, inst.Logs().Stdout)
	fmt.Println("live after Destroy:", s.Live())
	// Output:
	// exit 3 (exited)
	// run run-1 gateway http://127.0.0.1:8931/mcp
	// metadata service denied: true
	// live after Destroy: []
}
