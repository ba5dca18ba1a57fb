package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"

	"github.com/compatool/compatool/examples/server/app"
)

// Example serves the API on the in-memory backends and lists the task sets
// with a local token.
func Example() {
	dir, err := os.MkdirTemp("", "compatool-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	a, err := app.New(ctx, app.Config{
		DataDir: dir, GatewayURL: "http://127.0.0.1:1", // no run executes here
		Metadata: app.MetadataMem, Transcripts: app.TranscriptsMem, Sandbox: app.SandboxMem,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Shutdown(ctx)
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()

	token, err := app.MintToken(dir, "", app.TokenRequest{Org: "org_acme"})
	if err != nil {
		fmt.Println(err)
		return
	}
	req, _ := http.NewRequest("GET", srv.URL+"/v1/task-sets", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	var sets app.List[app.TaskSet]
	if err := json.NewDecoder(resp.Body).Decode(&sets); err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range sets.Items {
		fmt.Println(resp.StatusCode, s.Name, s.Tasks)
	}
	// Output:
	// 200 notes [notes-1 notes-2 notes-3 notes-4 notes-5]
}
