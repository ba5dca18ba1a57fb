package r2store_test

import (
	"fmt"
	"log"

	"github.com/compatool/compatool/storage/r2store"
)

// New makes an R2 client from an R2 API token; it sends nothing until the
// store is used.
func ExampleNew() {
	s, err := r2store.New("compatool-transcripts", &r2store.Options{
		Endpoint:        "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",
		AccessKeyID:     "<R2 token access key id>",
		SecretAccessKey: "<R2 token secret>",
		Prefix:          "transcripts/",
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s != nil)

	_, err = r2store.New("compatool-transcripts", &r2store.Options{Endpoint: "https://example.invalid"})
	fmt.Println(err)
	// Output:
	// true
	// r2store: set Options.Client, or Options.Endpoint, AccessKeyID and SecretAccessKey
}
