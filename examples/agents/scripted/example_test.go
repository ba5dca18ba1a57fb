package scripted_test

import (
	"fmt"

	"github.com/compatool/compatool/examples/agents/scripted"
)

// The scripted agent turns a notes goal into tool calls.
func ExamplePlan() {
	plan, _ := scripted.Plan(`You are working in a notes app. Create a note titled "todo" with the body "file taxes". Delete the note titled "draft".`)
	for _, a := range plan {
		fmt.Println(a.Tool, a.Args)
	}
	// Output:
	// add_note map[body:file taxes title:todo]
	// delete_note map[title:draft]
}
