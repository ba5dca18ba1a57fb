package sqlitestore_test

import (
	"bytes"
	"testing"

	"github.com/compatool/compatool/storage/envelope"
)

func testKeyring(t testing.TB) *envelope.Keyring {
	t.Helper()
	keys, err := envelope.NewStaticKeys("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, envelope.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	return envelope.NewKeyring(keys)
}
