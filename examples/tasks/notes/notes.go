// Package notes is an example task environment: a small notes service served
// over MCP, whose final state is graded. Each run gets its own empty (or
// seeded) notebook; the goal asks the agent to create and delete notes.
package notes

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/storage"
)

// Name is the environment's name in a harness's environment registry.
const Name = "notes"

// Limits on what an agent may store, so that a hostile agent cannot exhaust
// the host's memory through the tool server.
const (
	MaxNotes     = 1000
	MaxNoteBytes = 16 << 10
)

// Note is one note.
type Note struct {
	Title string `json:"title"`
	Body  string `json:"body"`
}

// Config is a task's configuration: the notebook at the start and the one
// the grader expects at the end.
type Config struct {
	Seed []Note `json:"seed,omitempty"`
	Want []Note `json:"want"`
}

// Task returns the content of a task that asks the agent to add the notes in
// add and delete the notes in del, starting from seed.
func Task(seed, add []Note, del []string) (compatool.TaskContent, error) {
	var goal strings.Builder
	goal.WriteString("You are working in a notes app.")
	want := slices.Clone(seed)
	for _, n := range add {
		fmt.Fprintf(&goal, " Create a note titled %q with the body %q.", n.Title, n.Body)
		want = append(want, n)
	}
	for _, t := range del {
		fmt.Fprintf(&goal, " Delete the note titled %q.", t)
		want = slices.DeleteFunc(want, func(n Note) bool { return n.Title == t })
	}
	goal.WriteString(" Change nothing else.")
	cfg, err := json.Marshal(Config{Seed: seed, Want: want})
	if err != nil {
		return compatool.TaskContent{}, err
	}
	return compatool.TaskContent{Goal: goal.String(), Config: cfg}, nil
}

// Environment is the notes environment. The zero value is ready to use.
type Environment struct{}

var _ compatool.Environment = Environment{}

// Open starts one run's notebook and tool server.
func (Environment) Open(_ context.Context, task compatool.TaskContent) (*compatool.Session, error) {
	var cfg Config
	if err := json.Unmarshal(task.Config, &cfg); err != nil {
		return nil, fmt.Errorf("notes: bad task config: %w", err)
	}
	b := &notebook{notes: slices.Clone(cfg.Seed)}
	return &compatool.Session{
		Server: b.server(),
		Grade: func(context.Context, []storage.ToolCall) (compatool.Grade, error) {
			return b.grade(cfg.Want), nil
		},
	}, nil
}

type notebook struct {
	mu    sync.Mutex
	notes []Note
}

type titleArgs struct {
	Title string `json:"title" jsonschema:"the note's title"`
}

type listResult struct {
	Titles []string `json:"titles"`
}

func (b *notebook) server() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "notes", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "add_note", Description: "Create a note."}, func(_ context.Context, _ *mcp.CallToolRequest, n Note) (*mcp.CallToolResult, any, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch {
		case n.Title == "":
			return nil, nil, fmt.Errorf("a note needs a title")
		case len(n.Title)+len(n.Body) > MaxNoteBytes:
			return nil, nil, fmt.Errorf("a note may hold at most %d bytes", MaxNoteBytes)
		case len(b.notes) >= MaxNotes:
			return nil, nil, fmt.Errorf("the notebook is full (%d notes)", MaxNotes)
		case slices.ContainsFunc(b.notes, func(o Note) bool { return o.Title == n.Title }):
			return nil, nil, fmt.Errorf("a note titled %q exists", n.Title)
		}
		b.notes = append(b.notes, n)
		return text("created " + n.Title), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "list_notes", Description: "List the titles of all notes."}, func(context.Context, *mcp.CallToolRequest, struct{}) (*mcp.CallToolResult, listResult, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		r := listResult{Titles: []string{}}
		for _, n := range b.notes {
			r.Titles = append(r.Titles, n.Title)
		}
		return nil, r, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "read_note", Description: "Read a note's body."}, func(_ context.Context, _ *mcp.CallToolRequest, a titleArgs) (*mcp.CallToolResult, any, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, n := range b.notes {
			if n.Title == a.Title {
				return text(n.Body), nil, nil
			}
		}
		return nil, nil, fmt.Errorf("no note titled %q", a.Title)
	})
	mcp.AddTool(s, &mcp.Tool{Name: "delete_note", Description: "Delete a note."}, func(_ context.Context, _ *mcp.CallToolRequest, a titleArgs) (*mcp.CallToolResult, any, error) {
		b.mu.Lock()
		defer b.mu.Unlock()
		i := slices.IndexFunc(b.notes, func(n Note) bool { return n.Title == a.Title })
		if i < 0 {
			return nil, nil, fmt.Errorf("no note titled %q", a.Title)
		}
		b.notes = slices.Delete(b.notes, i, i+1)
		return text("deleted " + a.Title), nil, nil
	})
	return s
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

func (b *notebook) grade(want []Note) compatool.Grade {
	b.mu.Lock()
	defer b.mu.Unlock()
	missing, extra := 0, 0
	for _, w := range want {
		if !slices.Contains(b.notes, w) {
			missing++
		}
	}
	for _, n := range b.notes {
		if !slices.Contains(want, n) {
			extra++
		}
	}
	total := len(want) + extra
	if total == 0 {
		return compatool.Grade{Passed: true, Score: 1, Detail: "notebook as expected"}
	}
	score := float64(len(want)-missing) / float64(total)
	if missing == 0 && extra == 0 {
		return compatool.Grade{Passed: true, Score: 1, Detail: "notebook as expected"}
	}
	return compatool.Grade{Score: score, Detail: fmt.Sprintf("%d expected notes missing, %d unexpected notes present", missing, extra)}
}
