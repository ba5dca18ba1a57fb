// Command build builds a Go agent into a container image archive in
// `docker save` format, without Docker:
//
//	go run ./examples/agents/build -o notesagent.tar
//
// It prints the image ID, by which Compatool names the image. The archive
// can be uploaded to the reference server (examples/server) or loaded with
// `docker load`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/compatool/compatool/examples/agents/agentimage"
)

func main() {
	pkg := flag.String("pkg", agentimage.NotesAgent, "the agent's Go main package")
	out := flag.String("o", "notesagent.tar", "the archive to write")
	tag := flag.String("tag", "", "the image's tag in the archive (default compatool/<package name>:latest)")
	arch := flag.String("arch", "", "the target architecture (default this machine's)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	id, err := agentimage.Build(ctx, *pkg, *out, &agentimage.Options{Tag: *tag, GOARCH: *arch})
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	fmt.Printf("%s\t%s\n", id, *out)
}
