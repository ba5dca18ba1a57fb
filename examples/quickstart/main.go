// Command quickstart shows Compatool as a newcomer meets it, in one command:
//
//	go run ./examples/quickstart
//
// It builds the reference agent (examples/agents/notesagent) into a
// container image archive without Docker, starts the reference server
// (examples/server/app) with the embedded defaults on a loopback port,
// mints a local token, uploads the image against the notes task set, shows
// progress while the runs execute in their sandboxes, and prints a results
// table and one stored, redacted transcript.
//
// The OCI sandbox needs root and runc. Without them the quickstart says so;
// -sandbox=mem runs the agent in-process instead, without isolation.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/compatool/compatool/examples/agents/agentimage"
	"github.com/compatool/compatool/examples/server/app"
)

func main() {
	sb := flag.String("sandbox", app.SandboxOCI, "sandbox: oci (runc, needs root) or mem (in-process, no isolation)")
	data := flag.String("data", "", "keep the server's data in this directory (default: a temporary directory, removed at the end)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, *sb, *data); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, sandbox, data string) error {
	if sandbox == app.SandboxOCI {
		if err := canRunContainers(out); err != nil {
			return err
		}
	}
	if data == "" {
		dir, err := os.MkdirTemp("", "compatool-quickstart-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		data = dir
	}

	fmt.Fprintln(out, "1. building the reference agent into a `docker save` archive (go build + go-containerregistry, no Docker)")
	start := time.Now()
	archive := filepath.Join(data, "notesagent.tar")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	imageID, err := agentimage.Build(ctx, agentimage.NotesAgent, archive, nil)
	if err != nil {
		return err
	}
	fi, err := os.Stat(archive)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   %s, %.1f MB, in %s\n", imageID, float64(fi.Size())/1e6, time.Since(start).Round(time.Millisecond))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	logPath := filepath.Join(data, "server.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	a, err := app.New(ctx, app.Config{
		DataDir: data, GatewayURL: "http://" + ln.Addr().String(), Sandbox: sandbox,
		Logger: slog.New(slog.NewJSONHandler(logFile, nil)),
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("start the server: %w", err)
	}
	go a.Serve(ln)
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		a.Shutdown(sctx)
	}()
	c := &client{base: "http://" + ln.Addr().String()}
	fmt.Fprintf(out, "2. serving the API on %s: metadata in SQLite, transcripts in files, agents in %s (log: %s)\n", c.base, describe(sandbox), logPath)

	c.token, err = app.MintToken(data, "", app.TokenRequest{Subject: "user_demo", Org: "org_demo"})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "3. signed in as user_demo of org_demo with a local JWT (go run ./examples/server token -org org_demo mints one)")

	sub, err := c.upload(ctx, archive)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "4. submitted %s: one run per task of the %q task set %v\n", sub.ID, app.NotesSet, sub.Tasks)

	runs, err := c.progress(ctx, out, sub.ID)
	if err != nil {
		return err
	}
	slices.SortFunc(runs, func(a, b app.Run) int { return strings.Compare(a.Task, b.Task) })
	fmt.Fprintln(out, "\nresults")
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tTASK\tSTATE\tPASSED\tSCORE\tTOOL CALLS\tAGENT TIME")
	for _, r := range runs {
		res := r.Result
		if res == nil {
			res = &app.Result{}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%.2f\t%d\t%.1f ms\n", r.ID, r.Task, r.State, res.Passed, res.Score, res.ToolCalls, res.AgentTimeMS)
	}
	tw.Flush()

	last := runs[len(runs)-1]
	raw, err := c.get(ctx, "/v1/runs/"+last.ID+"/transcript")
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, raw, "", "  "); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nstored transcript of %s: the goal is [REDACTED] wherever it appeared; tool calls are kept in full\n%s\n", last.ID, pretty.String())
	return nil
}

func describe(sandbox string) string {
	if sandbox == app.SandboxMem {
		return "this process (sandbox=mem: no isolation)"
	}
	return "runc containers with no network but their MCP endpoint"
}

// canRunContainers says what is missing for the OCI sandbox.
// canRunContainers checks what the OCI sandbox needs. As root on a Debian or
// Ubuntu machine it installs a missing runc with apt-get, saying so;
// otherwise it says what is missing.
func canRunContainers(out io.Writer) error {
	if _, err := exec.LookPath("runc"); err != nil && os.Geteuid() == 0 {
		if apt, err := exec.LookPath("apt-get"); err == nil {
			fmt.Fprintln(out, "0. installing runc, the OCI runtime the sandbox uses (apt-get install -y runc)")
			for _, args := range [][]string{{"update"}, {"install", "-y", "runc"}} {
				cmd := exec.Command(apt, args...)
				cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
				if b, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, b)
				}
			}
		}
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (run with sudo)")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc (apt-get install runc)")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("the OCI sandbox needs %v; or try -sandbox=mem, which runs the agent in this process without isolation", missing)
}

// client is a minimal client of the server's API.
type client struct {
	base, token string
}

func (c *client) do(ctx context.Context, method, path, contentType string, body io.Reader) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string }
		}
		json.Unmarshal(b, &e)
		return nil, fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, e.Error.Code, e.Error.Message)
	}
	return b, nil
}

func (c *client) get(ctx context.Context, path string) ([]byte, error) {
	return c.do(ctx, "GET", path, "", nil)
}

// upload submits the archive for the notes task set, streaming it.
func (c *client) upload(ctx context.Context, archive string) (app.Submission, error) {
	var sub app.Submission
	f, err := os.Open(archive)
	if err != nil {
		return sub, err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			w, err := mw.CreateFormField("submission")
			if err != nil {
				return err
			}
			if err := json.NewEncoder(w).Encode(map[string]any{"agent_name": "notesagent (reference)", "task_set": app.NotesSet}); err != nil {
				return err
			}
			if w, err = mw.CreateFormFile("image", filepath.Base(archive)); err != nil {
				return err
			}
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	b, err := c.do(ctx, "POST", "/v1/submissions", mw.FormDataContentType(), pr)
	if err != nil {
		return sub, err
	}
	return sub, json.Unmarshal(b, &sub)
}

// progress prints a line each time more runs have ended and returns the
// runs once all have.
func (c *client) progress(ctx context.Context, out io.Writer, sub string) ([]app.Run, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := -1
	for {
		b, err := c.get(ctx, "/v1/runs?submission="+sub)
		if err != nil {
			return nil, err
		}
		var runs app.List[app.Run]
		if err := json.Unmarshal(b, &runs); err != nil {
			return nil, err
		}
		ended, running := 0, 0
		for _, r := range runs.Items {
			switch r.State {
			case "finished", "failed", "cancelled":
				ended++
			case "running":
				running++
			}
		}
		if ended != last {
			fmt.Fprintf(out, "   %d/%d runs ended, %d running\n", ended, len(runs.Items), running)
			last = ended
		}
		if ended == len(runs.Items) && ended > 0 {
			return runs.Items, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("the runs did not end in time")
		case <-tick.C:
		}
	}
}
