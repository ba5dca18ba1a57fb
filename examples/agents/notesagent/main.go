// Command notesagent is the reference agent: a static program, packed into a
// container image by examples/agents/build, that solves the notes tasks of
// examples/tasks/notes through the run's MCP endpoint with the official MCP
// Go SDK client (see examples/agents/scripted).
//
// It shows the agent side of the environment contract: the sandbox gives
// every agent COMPATOOL_GOAL (the task), COMPATOOL_MCP_URL (the only address
// it can reach), COMPATOOL_MCP_TOKEN (a bearer token valid for this run only)
// and COMPATOOL_RUN_ID. It exits 0 when it carried out the goal, 1 when a
// tool call failed and 2 when the environment is incomplete.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/compatool/compatool/examples/agents/scripted"
	"github.com/compatool/compatool/sandbox"
)

func main() {
	// The sandbox stops an agent with SIGTERM before it kills it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx))
}

func run(ctx context.Context) int {
	cfg := scripted.FromEnv(os.Getenv, nil)
	if cfg.MCPURL == "" || cfg.Token == "" || cfg.Goal == "" {
		fmt.Fprintf(os.Stderr, "notesagent: %s, %s and %s must be set; Compatool's sandbox sets them for each run\n",
			sandbox.EnvMCPURL, sandbox.EnvMCPToken, sandbox.EnvGoal)
		return 2
	}
	if err := scripted.Solve(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "notesagent:", err)
		return 1
	}
	// Echoing the goal is deliberate: the stored transcript shows it as
	// [REDACTED], since the harness redacts the goal wherever it appears.
	fmt.Printf("notesagent: run %s done: %s\n", os.Getenv(sandbox.EnvRunID), cfg.Goal)
	return 0
}
