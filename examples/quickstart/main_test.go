package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/compatool/compatool/examples/server/app"
)

// TestQuickstart runs the quickstart as `go run ./examples/quickstart` does,
// with the embedded defaults (runc), and checks what it shows.
func TestQuickstart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, app.SandboxOCI, t.TempDir()); err != nil {
		t.Fatalf("quickstart: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"5/5 runs ended", `"goal": "[REDACTED]"`, `"kind": "tool_call"`} {
		if !strings.Contains(s, want) {
			t.Errorf("the output lacks %q:\n%s", want, s)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^run_\S+\s+notes-\d\s+finished\s+true\s+1\.00`).FindAllString(s, -1)); n != 5 {
		t.Errorf("the results table shows %d passed runs, want 5:\n%s", n, s)
	}
	if strings.Contains(s, "You are working in a notes app") {
		t.Errorf("the output shows a goal")
	}
}
