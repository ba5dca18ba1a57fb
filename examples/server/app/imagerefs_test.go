package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/examples/agents/agentimage"
	"github.com/compatool/compatool/storage"
)

// TestEraseRemovesUnusedImages erases submissions one by one: an image
// leaves the sandbox with the last submission of it of any organisation,
// and not before.
func TestEraseRemovesUnusedImages(t *testing.T) {
	ta := newTestApp(t, nil)
	tokA, tokB := ta.token("org_a", false), ta.token("org_b", false)
	shared := goodImage(t)
	own := withConfig(t, goodImage(t), func(cf *v1.ConfigFile) { cf.Config.Env = []string{"ONLY_ORG_A=1"} })
	sharedID, ownID := imageID(t, shared), imageID(t, own)

	a1 := ta.uploadSub(tokA, shared)
	b1 := ta.uploadSub(tokB, shared)
	a2 := ta.submitByID(tokA, sharedID)
	aOwn := ta.uploadSub(tokA, own)

	for _, step := range []struct {
		name    string
		token   string
		sub     string
		removed []string // every removal so far
	}{
		{"the only submission of an image", tokA, aOwn, []string{ownID}},
		{"one of two submissions of an organisation", tokA, a1, []string{ownID}},
		{"the organisation's last, another's remains", tokA, a2, []string{ownID}},
		{"the last submission of any organisation", tokB, b1, []string{ownID, sharedID}},
	} {
		if r := ta.do("DELETE", "/v1/submissions/"+step.sub, step.token, "", nil); r.status != http.StatusNoContent {
			t.Fatalf("%s: erase = %d %s", step.name, r.status, r.body)
		}
		if diff := cmp.Diff(step.removed, ta.imports.removals()); diff != "" {
			t.Errorf("%s: removals (-want +got):\n%s", step.name, diff)
		}
	}
	if r := ta.do("DELETE", "/v1/submissions/"+b1, tokB, "", nil); r.status != http.StatusNotFound {
		t.Errorf("second erase = %d %s, want 404", r.status, r.body)
	}
	if n := len(ta.imports.removals()); n != 2 {
		t.Errorf("%d removals after a second erase, want 2", n)
	}
	if left, _ := os.ReadDir(ta.refs.dir); len(left) != 0 {
		t.Errorf("image records left: %v", left)
	}
	r := ta.do("POST", "/v1/submissions", tokB, "application/json", strings.NewReader(fmt.Sprintf(`{"agent_name": "x", "task_set": "notes", "image": %q}`, sharedID)))
	if r.status != http.StatusBadRequest || r.errorCode() != "unknown_image" {
		t.Errorf("submitting a removed image by ID = %d %s, want unknown_image", r.status, r.body)
	}
}

// TestImageRemovalUnderConcurrency submits and erases submissions of one
// image from two organisations at once. The sandbox must never be asked to
// remove the image while a submission of it is stored, and must be asked
// once the last one is erased.
func TestImageRemovalUnderConcurrency(t *testing.T) {
	ta := newTestApp(t, nil)
	img := goodImage(t)
	id := imageID(t, img)
	orgs := []auth.OrgID{"org_a", "org_b"}
	ta.imports.onRemove = func(removed string) {
		for _, org := range orgs {
			subs, err := ta.meta.ListSubmissions(context.Background(), auth.InternalScope(org), storage.Page{Limit: storage.MaxPageLimit})
			if err != nil {
				t.Error(err)
			}
			for _, sub := range subs {
				if sub.Image == removed {
					t.Errorf("image %s removed while submission %s of %s uses it", removed, sub.ID, org)
				}
			}
		}
	}
	var wg sync.WaitGroup
	for _, org := range orgs {
		tok := ta.token(org, false)
		for range 4 {
			wg.Go(func() {
				for range 3 {
					// By ID while the organisation has a submission of the
					// image, else by upload.
					var r response
					if ta.hasImage(org, id) {
						r = ta.do("POST", "/v1/submissions", tok, "application/json", strings.NewReader(fmt.Sprintf(`{"agent_name": "x", "task_set": "notes", "image": %q}`, id)))
					}
					if r.status != http.StatusCreated {
						ct, body := multipartBody(t, `{"agent_name": "x", "task_set": "notes"}`, archive(t, img))
						r = ta.do("POST", "/v1/submissions", tok, ct, body)
					}
					var sub Submission
					if r.status != http.StatusCreated || json.Unmarshal(r.body, &sub) != nil {
						t.Errorf("submit = %d %s", r.status, r.body)
						return
					}
					if r := ta.do("DELETE", "/v1/submissions/"+sub.ID, tok, "", nil); r.status != http.StatusNoContent {
						t.Errorf("erase = %d %s", r.status, r.body)
					}
				}
			})
		}
	}
	wg.Wait()
	removals := ta.imports.removals()
	if len(removals) == 0 || removals[len(removals)-1] != id {
		t.Errorf("removals %v: the image was not removed after the last erasure", removals)
	}
	if left, _ := os.ReadDir(ta.refs.dir); len(left) != 0 {
		t.Errorf("image records left: %v", left)
	}
}

func imageID(t *testing.T, img v1.Image) string {
	t.Helper()
	id, err := agentimage.ID(img)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// hasImage reports whether org has a stored submission of image.
func (ta *testApp) hasImage(org auth.OrgID, image string) bool {
	ok, err := ta.hasSubmissionOf(context.Background(), auth.InternalScope(org), image)
	if err != nil {
		ta.t.Error(err)
	}
	return ok
}

// uploadSub uploads img as a submission and returns its id.
func (ta *testApp) uploadSub(token string, img v1.Image) string {
	ta.t.Helper()
	ct, body := multipartBody(ta.t, `{"agent_name": "a", "task_set": "notes"}`, archive(ta.t, img))
	return ta.created(ta.do("POST", "/v1/submissions", token, ct, body))
}

// submitByID submits an image by ID and returns the submission's id.
func (ta *testApp) submitByID(token, image string) string {
	ta.t.Helper()
	body := fmt.Sprintf(`{"agent_name": "a", "task_set": "notes", "image": %q}`, image)
	return ta.created(ta.do("POST", "/v1/submissions", token, "application/json", strings.NewReader(body)))
}

func (ta *testApp) created(r response) string {
	ta.t.Helper()
	var sub Submission
	if r.status != http.StatusCreated || json.Unmarshal(r.body, &sub) != nil {
		ta.t.Fatalf("submit = %d %s", r.status, r.body)
	}
	return sub.ID
}
