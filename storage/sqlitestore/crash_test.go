package sqlitestore_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/sqlitestore"
)

// crashEnv, when set, makes TestKillMidWrite the child that writes into the
// database file it names until it is killed.
const crashEnv = "COMPATOOL_SQLITESTORE_CRASH_CHILD"

const crashWriters = 4

// crashRuns is how many runs the child gives submission i, so a reader can
// tell a whole submission from a torn one.
func crashRuns(i int) int { return 1 + i%40 }

func crashSubmission(i int) (storage.Submission, []storage.Run) {
	sub := storage.Submission{ID: storage.SubmissionID(fmt.Sprintf("sub-%06d", i)), Org: "org-crash", Owner: "u", Image: "img"}
	for k := range crashRuns(i) {
		sub.Tasks = append(sub.Tasks, storage.TaskID(fmt.Sprintf("t-%02d", k)))
	}
	runs := make([]storage.Run, len(sub.Tasks))
	for k, task := range sub.Tasks {
		runs[k] = storage.Run{ID: storage.RunID(fmt.Sprintf("%s.%s", sub.ID, task)), Submission: sub.ID, Org: sub.Org, Task: task, State: storage.RunQueued}
	}
	return sub, runs
}

// crashResult is what the child writes when it finishes run k.
func crashResult(k int) *storage.Result {
	return &storage.Result{Passed: true, Score: 1, ToolCalls: k, Detail: strings.Repeat("d", 1000)}
}

func crashChild(path string) {
	s, err := sqlitestore.Open(context.Background(), path, nil)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	ctx, scope := context.Background(), auth.InternalScope("org-crash")
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range crashWriters {
		wg.Go(func() {
			for i := w; ; i += crashWriters {
				sub, runs := crashSubmission(i)
				if err := s.CreateSubmission(ctx, scope, sub, runs); err != nil {
					fmt.Println("create:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Println("committed", sub.ID)
				mu.Unlock()
				for k, r := range runs {
					r.State, r.Result = storage.RunFinished, crashResult(k)
					if err := s.UpdateRun(ctx, scope, r); err != nil {
						fmt.Println("update:", err)
						os.Exit(2)
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestKillMidWrite kills a process writing submissions with SIGKILL and
// checks that every submission in the file is whole: all its runs or none,
// every run queued without a result or finished with its whole result.
func TestKillMidWrite(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "meta.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillMidWrite$")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	committed := map[storage.SubmissionID]bool{}
	lines := bufio.NewScanner(out)
	for len(committed) < 60 && lines.Scan() {
		id, ok := strings.CutPrefix(lines.Text(), "committed ")
		if !ok {
			t.Fatalf("child: %s", lines.Text())
		}
		committed[storage.SubmissionID(id)] = true
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	cmd.Wait()
	if len(committed) < 60 {
		t.Fatalf("the child stopped after %d submissions: %v", len(committed), lines.Err())
	}

	s := open(t, path, nil)
	defer s.Close()
	ctx, scope := context.Background(), auth.InternalScope("org-crash")
	seen := 0
	for p := (storage.Page{Limit: storage.MaxPageLimit}); ; {
		subs, err := s.ListSubmissions(ctx, scope, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(subs) == 0 {
			break
		}
		for _, sub := range subs {
			seen++
			delete(committed, sub.ID)
			var i int
			fmt.Sscanf(string(sub.ID), "sub-%06d", &i)
			runs, err := s.ListRuns(ctx, scope, sub.ID, storage.Page{Limit: storage.MaxPageLimit})
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != crashRuns(i) || len(sub.Tasks) != crashRuns(i) {
				t.Errorf("submission %s is torn: %d tasks and %d runs, want %d", sub.ID, len(sub.Tasks), len(runs), crashRuns(i))
			}
			for k, r := range runs {
				switch {
				case r.State == storage.RunQueued && r.Result == nil:
				case r.State == storage.RunFinished && r.Result != nil && *r.Result == *crashResult(k):
				default:
					t.Errorf("run %s is torn: state %s, result %+v", r.ID, r.State, r.Result)
				}
			}
		}
		p.After = string(subs[len(subs)-1].ID)
	}
	if len(committed) > 0 {
		t.Errorf("submissions the child saw committed are missing after the kill: %v", committed)
	}
	t.Logf("%d whole submissions after SIGKILL", seen)
}
