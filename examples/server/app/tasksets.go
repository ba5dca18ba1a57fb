package app

import (
	"context"
	"fmt"
	"time"

	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/storage"
)

// A TaskSet is a named list of tasks that a submission runs against.
type TaskSet struct {
	Name        string           `json:"name"`
	Description string           `json:"description"`
	Tasks       []storage.TaskID `json:"tasks"`
}

// NotesSet is the name of the example task set the server registers at
// start: five tasks of the notes environment (examples/tasks/notes).
const NotesSet = "notes"

// NotesTasks returns the tasks of the notes task set, goals included. The tasks are public (not private
// to a month): their content is in this repository anyway, and a public task
// stays servable when the server runs across the end of a month. Their
// goals are still redacted in every stored transcript.
func NotesTasks() ([]compatool.TaskSpec, error) {
	defs := []struct {
		seed, add []notes.Note
		del       []string
	}{
		{add: []notes.Note{{Title: "groceries", Body: "eggs, milk, bread"}}},
		{add: []notes.Note{{Title: "todo", Body: "file taxes"}, {Title: "ideas", Body: "a faster sandbox"}}},
		{seed: []notes.Note{{Title: "draft", Body: "old"}}, del: []string{"draft"}},
		{seed: []notes.Note{{Title: "a", Body: "1"}}, add: []notes.Note{{Title: "b", Body: "2"}}, del: []string{"a"}},
		{add: []notes.Note{{Title: "quote", Body: `she said "hi" \o/`}}},
	}
	month := compatool.Month(time.Now())
	specs := make([]compatool.TaskSpec, len(defs))
	for i, d := range defs {
		content, err := notes.Task(d.seed, d.add, d.del)
		if err != nil {
			return nil, err
		}
		specs[i] = compatool.TaskSpec{
			ID: storage.TaskID(fmt.Sprintf("notes-%d", i+1)), Environment: notes.Name,
			Month: month, Content: content,
		}
	}
	return specs, nil
}

// registerTaskSets stores the example tasks (sealed, replacing earlier
// versions) and returns the task sets by name.
func registerTaskSets(ctx context.Context, h *compatool.Harness) (map[string]TaskSet, error) {
	specs, err := NotesTasks()
	if err != nil {
		return nil, err
	}
	set := TaskSet{Name: NotesSet, Description: "five tasks in a notes app: create and delete notes through MCP tools"}
	for _, s := range specs {
		if err := h.PutTask(ctx, s); err != nil {
			return nil, fmt.Errorf("register task %s of the %q task set: %w", s.ID, NotesSet, err)
		}
		set.Tasks = append(set.Tasks, s.ID)
	}
	return map[string]TaskSet{NotesSet: set}, nil
}
