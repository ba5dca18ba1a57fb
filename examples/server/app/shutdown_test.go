package app

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/sandbox/memsandbox"
	"github.com/compatool/compatool/storage"
)

// TestShutdown starts runs whose agents block, then shuts down: runs in
// flight finish if they can before the deadline and are failed (their
// sandboxes destroyed) if they cannot; queued runs stay queued; the API and
// readyz answer 503 from the start of the shutdown.
func TestShutdown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		expired bool // the shutdown deadline has passed already
		want    []string
	}{
		{"runs in flight finish", false, []string{"finished", "finished", "finished", "finished", "queued"}},
		{"runs past the deadline fail", true, []string{"failed:infrastructure", "failed:infrastructure", "failed:infrastructure", "failed:infrastructure", "queued"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ta := newTestApp(t, func(c *Config) { c.Workers = 4 })
			tok := ta.token("org_a", false)
			ct, body := multipartBody(t, `{"agent_name": "ref", "task_set": "notes"}`, archive(t, goodImage(t)))
			var sub Submission
			if err := json.Unmarshal(ta.do("POST", "/v1/submissions", tok, ct, body).body, &sub); err != nil {
				t.Fatal(err)
			}
			if _, err := ta.h.Wait(context.Background(), auth.InternalScope("org_a"), storage.SubmissionID(sub.ID)); err != nil {
				t.Fatal(err)
			}

			started, release := make(chan struct{}, 5), make(chan struct{})
			sb := ta.imports.next.(memImporter).sb
			sb.Register(sub.Image, func(ctx context.Context, env *memsandbox.Env) int {
				started <- struct{}{}
				select {
				case <-release:
					return referenceAgent(ctx, env)
				case <-ctx.Done():
					return 1
				}
			})
			r := ta.do("POST", "/v1/submissions", tok, "application/json", strings.NewReader(fmt.Sprintf(`{"agent_name": "slow", "task_set": "notes", "image": %q}`, sub.Image)))
			var slow Submission
			if err := json.Unmarshal(r.body, &slow); err != nil {
				t.Fatalf("%v: %s", err, r.body)
			}
			for range 4 {
				<-started
			}

			// A client waiting for the runs is answered when the shutdown
			// starts, not when its wait would have ended.
			waited := make(chan response, 1)
			go func() { waited <- ta.do("GET", "/v1/runs?submission="+slow.ID+"&wait=5m", tok, "", nil) }()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if tc.expired {
				cancel()
			} else {
				close(release)
			}
			if err := ta.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}

			select {
			case r := <-waited:
				if r.status != 200 && r.status != 503 {
					t.Errorf("waiting client got %d %s", r.status, r.body)
				}
			case <-time.After(time.Minute):
				t.Fatal("a client waiting for the runs was not answered at shutdown")
			}

			runs, err := ta.meta.ListRuns(context.Background(), auth.InternalScope("org_a"), storage.SubmissionID(slow.ID), storage.Page{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range runs {
				s := string(r.State)
				if r.Result != nil && r.Result.Failure != "" {
					s += ":" + string(r.Result.Failure)
				}
				got = append(got, s)
			}
			if diff := cmp.Diff(tc.want, slices.Sorted(slices.Values(got))); diff != "" {
				t.Errorf("run states after shutdown (-want +got):\n%s", diff)
			}
			if live := sb.Live(); len(live) > 0 {
				t.Errorf("sandboxes left after shutdown: %v", live)
			}
			for _, path := range []string{"/readyz", "/v1/submissions"} {
				if r := ta.do("GET", path, tok, "", nil); r.status != 503 || r.errorCode() != "shutting_down" {
					t.Errorf("GET %s after shutdown = %d %s, want 503 shutting_down", path, r.status, r.body)
				}
			}
		})
	}
}
