// Command ocibench measures ocisandbox on this machine: N sequential runs of
// a small agent image (sandbox start → the agent's first MCP request, and
// the whole run, p50/p90), the same image under `docker run --network none`
// where a Docker daemon runs, and 20 concurrent runs with the host's
// mounts, network namespaces, cgroups and runtime processes counted before
// and after. It needs root, the OCI runtime and the go command (it builds
// the sandboxtest agent), and prints a report on stdout.
//
//	go run ./sandbox/ocisandbox/cmd/ocibench -n 100 -runtime runc
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/compatool/compatool/sandbox/ocisandbox"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/benchrun"
	"github.com/compatool/compatool/sandbox/ocisandbox/internal/testimage"
)

func main() {
	n := flag.Int("n", 50, "sequential runs")
	concurrent := flag.Int("concurrent", 20, "concurrent runs for the leak check")
	runtime := flag.String("runtime", "runc", "OCI runtime (runc or crun)")
	flag.Parse()
	if err := run(*runtime, *n, *concurrent); err != nil {
		fmt.Fprintln(os.Stderr, "ocibench:", err)
		os.Exit(1)
	}
}

func run(runtime string, n, concurrent int) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "ocibench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.Chmod(work, 0o711); err != nil {
		return err
	}
	s, err := ocisandbox.New(&ocisandbox.Options{
		Runtime: runtime, StateDir: filepath.Join(work, "state"), CacheDir: filepath.Join(work, "cache"),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer s.Close()
	bin, err := testimage.BuildAgent(ctx, work)
	if err != nil {
		return err
	}
	layer, err := testimage.AgentLayer(bin)
	if err != nil {
		return err
	}
	img, err := testimage.Image(benchrun.Program, layer)
	if err != nil {
		return err
	}
	const tag = "compatool/ocibench-agent:latest"
	archive := filepath.Join(work, "agent.tar")
	if err := testimage.WriteArchive(archive, tag, img); err != nil {
		return err
	}
	ids, err := s.ImportArchive(ctx, archive)
	if err != nil {
		return err
	}
	g := benchrun.NewGateway()
	defer g.Close()

	fmt.Printf("ocisandbox %s, user namespace %v, %d runs of a static Go agent doing one MCP tool call\n", s.Runtime(), s.UserNamespace(), n)
	if _, err := benchrun.Run(ctx, s, g, "warm-up", ids[0]); err != nil {
		return err
	}
	var firsts, wholes []time.Duration
	for i := range n {
		tm, err := benchrun.Run(ctx, s, g, fmt.Sprintf("bench-%d", i), ids[0])
		if err != nil {
			return err
		}
		firsts, wholes = append(firsts, tm.FirstRequest), append(wholes, tm.Whole)
	}
	report(runtime+": start → first MCP request", firsts)
	report(runtime+": whole run (start → destroyed)", wholes)

	if err := benchrun.DockerAvailable(ctx); err != nil {
		fmt.Printf("docker: not available (%v)\n", err)
	} else if ts, err := benchrun.DockerRun(ctx, archive, tag, n); err != nil {
		fmt.Printf("docker: failed: %v\n", err)
	} else {
		var f, w []time.Duration
		for _, t := range ts {
			f, w = append(f, t.FirstRequest), append(w, t.Whole)
		}
		report("docker run --network none: start → first output", f)
		report("docker run --network none: whole run", w)
		fmt.Printf("ratio docker/ocisandbox p50: first %.1fx, whole %.1fx\n",
			float64(benchrun.Percentile(f, 50))/float64(benchrun.Percentile(firsts, 50)),
			float64(benchrun.Percentile(w, 50))/float64(benchrun.Percentile(wholes, 50)))
	}

	before := benchrun.Count(s.Runtime())
	t0 := time.Now()
	if err := benchrun.Concurrent(ctx, s, g, ids[0], concurrent); err != nil {
		return err
	}
	took := time.Since(t0)
	after := benchrun.Count(s.Runtime())
	fmt.Printf("%d concurrent runs: %v; before %+v, after %+v", concurrent, took.Round(time.Millisecond), before, after)
	if before != after {
		fmt.Println(" — LEAK")
		return fmt.Errorf("resources leaked")
	}
	fmt.Println(" — no leak")
	return nil
}

func report(what string, ds []time.Duration) {
	fmt.Printf("%-55s p50 %6.1f ms  p90 %6.1f ms\n", what,
		float64(benchrun.Percentile(ds, 50).Microseconds())/1000, float64(benchrun.Percentile(ds, 90).Microseconds())/1000)
}
