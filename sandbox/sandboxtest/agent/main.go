// Command agent is the sandboxtest interpreter as a static binary for
// container images: it runs the [sandboxtest.Program] given as JSON in
// $COMPATOOL_TEST_PROGRAM on the real OS and exits with its code. Container
// drivers pack it into the images their conformance harness builds; build it
// with CGO_ENABLED=0.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/compatool/compatool/sandbox/sandboxtest"
)

func main() {
	var p sandboxtest.Program
	if err := json.Unmarshal([]byte(os.Getenv(sandboxtest.ProgramEnv)), &p); err != nil {
		fmt.Fprintf(os.Stderr, "agent: $%s is not a JSON sandboxtest.Program: %v\n", sandboxtest.ProgramEnv, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sandboxtest.Run(ctx, sandboxtest.OSSystem(), p)
	stop()
	os.Exit(code)
}
