package agentimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/compatool/compatool/compatool"
	"github.com/compatool/compatool/examples/agents/agentimage"
	"github.com/compatool/compatool/examples/tasks/notes"
	"github.com/compatool/compatool/sandbox"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestBuildNotesAgent builds the reference agent into an archive, reads the
// archive back as `docker load` would, and runs the packed binary against a
// notes tool server behind a bearer check: the image holds a working agent.
func TestBuildNotesAgent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	archive := filepath.Join(t.TempDir(), "notesagent.tar")
	id, err := agentimage.Build(ctx, agentimage.NotesAgent, archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatalf("the archive is not a docker-save archive: %v", err)
	}
	if got, _ := agentimage.ID(img); got != id {
		t.Errorf("archive's image ID = %s, Build returned %s", got, id)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/agent"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	var bin []byte
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == "agent" {
			if bin, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if diff := cmp.Diff([]string{"agent", "tmp/"}, names); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		t.Fatalf("/agent is not an ELF binary")
	}

	// Run the packed binary on the host against a notes tool server.
	path := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	content, err := notes.Task(nil, []notes.Note{{Title: "todo", Body: "ship it"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := notes.Environment{}.Open(ctx, content)
	if err != nil {
		t.Fatal(err)
	}
	const token = "run-token"
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return sess.Server }, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		mcpHandler.ServeHTTP(w, r)
	}))
	defer srv.Close()

	cmd := exec.CommandContext(ctx, path)
	cmd.Env = []string{sandbox.EnvMCPURL + "=" + srv.URL, sandbox.EnvMCPToken + "=" + token, sandbox.EnvGoal + "=" + content.Goal, sandbox.EnvRunID + "=run-1"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	g, err := sess.Grade(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(compatool.Grade{Passed: true, Score: 1, Detail: "notebook as expected"}, g); diff != "" {
		t.Errorf("grade (-want +got):\n%s\nagent output:\n%s", diff, out)
	}

	// Without its environment the agent says what is missing.
	cmd = exec.CommandContext(ctx, path)
	cmd.Env = []string{}
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), sandbox.EnvMCPURL) {
		t.Errorf("agent without environment: %v, %q; want exit 2 naming %s", err, out, sandbox.EnvMCPURL)
	}
}

func TestImageRefusesEmptyBinary(t *testing.T) {
	if _, err := agentimage.Image(nil, "amd64"); err == nil {
		t.Error("Image(nil) succeeded")
	}
}
