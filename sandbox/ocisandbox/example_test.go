package ocisandbox_test

import (
	"errors"
	"fmt"

	"github.com/compatool/compatool/sandbox/ocisandbox"
)

// New checks the host before anything runs: here the runtime binary is
// missing, and the error says what to install.
func ExampleNew() {
	_, err := ocisandbox.New(&ocisandbox.Options{Runtime: "/nonexistent/runc"})
	fmt.Println(errors.Is(err, ocisandbox.ErrRuntimeNotFound))
	// Output:
	// true
}
