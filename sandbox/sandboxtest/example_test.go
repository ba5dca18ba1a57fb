package sandboxtest_test

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/compatool/compatool/sandbox/sandboxtest"
)

// A program is plain data: container drivers pass it as JSON in
// $COMPATOOL_TEST_PROGRAM to the agent binary, which runs it as Run does here.
func ExampleRun() {
	p := sandboxtest.Program{
		{Op: "print", Text: "hello from the agent\n"},
		{Op: "read_file", Path: "/nonexistent/sandboxtest"},
		{Op: "exit", Code: 3},
	}
	code := sandboxtest.Run(context.Background(), sandboxtest.OSSystem(), p)
	fmt.Println("exit", code)
	js, _ := json.Marshal(p[2])
	fmt.Println(string(js))
	// Output:
	// hello from the agent
	// absent /nonexistent/sandboxtest
	// exit 3
	// {"op":"exit","code":3}
}
