package notes_test

import (
	"fmt"

	"github.com/compatool/compatool/examples/tasks/notes"
)

// A task's goal and the configuration its grader checks.
func ExampleTask() {
	content, _ := notes.Task([]notes.Note{{Title: "draft", Body: "old"}}, []notes.Note{{Title: "todo", Body: "file taxes"}}, []string{"draft"})
	fmt.Println(content.Goal)
	fmt.Println(string(content.Config))
	// Output:
	// You are working in a notes app. Create a note titled "todo" with the body "file taxes". Delete the note titled "draft". Change nothing else.
	// {"seed":[{"title":"draft","body":"old"}],"want":[{"title":"todo","body":"file taxes"}]}
}
