package agentimage_test

import (
	"fmt"

	"github.com/compatool/compatool/examples/agents/agentimage"
)

func ExampleImage() {
	img, err := agentimage.Image([]byte("\x7fELF a static binary"), "amd64")
	if err != nil {
		fmt.Println(err)
		return
	}
	cf, _ := img.ConfigFile()
	layers, _ := img.Layers()
	fmt.Println(cf.OS, cf.Architecture, cf.Config.Entrypoint, cf.Config.User, len(layers), "layer")
	// The same binary always gives the same image ID.
	again, _ := agentimage.Image([]byte("\x7fELF a static binary"), "amd64")
	a, _ := agentimage.ID(img)
	b, _ := agentimage.ID(again)
	fmt.Println(a == b)
	// Output:
	// linux amd64 [/agent] 65534:65534 1 layer
	// true
}
