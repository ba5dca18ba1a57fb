package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/compatool/compatool/storage/envelope"
)

func ExampleKeyring() {
	ctx := context.Background()
	// In production the keys come from LoadKeyFile or a KMS-backed provider.
	keys, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		log.Fatal(err)
	}
	ring := envelope.NewKeyring(keys)

	sealed, err := ring.Seal(ctx, "task-42", []byte("Book the cheapest flight to Lisbon."))
	if err != nil {
		log.Fatal(err)
	}
	plain, err := ring.Open(ctx, "task-42", sealed)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", plain)

	// Sealed bytes are bound to their record.
	_, err = ring.Open(ctx, "task-43", sealed)
	fmt.Println(errors.Is(err, envelope.ErrDecrypt))
	// Output:
	// Book the cheapest flight to Lisbon.
	// true
}
