package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustKeys(t testing.TB, current string, ids ...string) KeyProvider {
	t.Helper()
	keys := map[string][]byte{}
	for i, id := range ids {
		keys[id] = testKey(byte(i + 1))
	}
	p, err := NewStaticKeys(current, keys)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTrip(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	ctx := context.Background()
	for _, plain := range [][]byte{{}, []byte("x"), []byte("the goal of task 7"), bytes.Repeat([]byte("abc"), 1<<20)} {
		sealed, err := k.Seal(ctx, "task-7", plain)
		if err != nil {
			t.Fatal(err)
		}
		got, err := k.Open(ctx, "task-7", sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("Open(Seal(%d bytes)) = %d bytes, not the plaintext", len(plain), len(got))
		}
	}
}

func TestFreshDataKeyPerSeal(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	plain := []byte("same content")
	a, err := k.Seal(context.Background(), "r", plain)
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.Seal(context.Background(), "r", plain)
	if err != nil {
		t.Fatal(err)
	}
	pa, _ := parse(a)
	pb, _ := parse(b)
	if bytes.Equal(pa.wrapped, pb.wrapped) || bytes.Equal(pa.body, pb.body) {
		t.Error("two seals of the same content share a wrapped key or ciphertext; want a fresh data key and nonce each time")
	}
}

func TestRecordIDIsBound(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	ctx := context.Background()
	secret := []byte("private content of task A")
	sa, err := k.Seal(ctx, "task-a", secret)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := k.Seal(ctx, "task-b", []byte("content of task B"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		record string
		sealed []byte
	}{{"task-b", sa}, {"task-a", sb}, {"task-a ", sa}, {"task-", sa}} {
		_, err := k.Open(ctx, c.record, c.sealed)
		if !errors.Is(err, ErrDecrypt) {
			t.Errorf("Open(%q, sealed for another record) error = %v, want ErrDecrypt", c.record, err)
		}
		if err != nil && strings.Contains(err.Error(), string(secret)) {
			t.Errorf("error leaks plaintext: %v", err)
		}
		if _, err := k.Rewrap(ctx, c.record, c.sealed); !errors.Is(err, ErrDecrypt) {
			t.Errorf("Rewrap(%q, sealed for another record) error = %v, want ErrDecrypt", c.record, err)
		}
	}
}

func TestEveryByteIsAuthenticated(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k0", "k1"))
	ctx := context.Background()
	sealed, err := k.Seal(ctx, "r1", []byte("hello, world"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			b := bytes.Clone(sealed)
			b[i] ^= mask
			if _, err := k.Open(ctx, "r1", b); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Open with byte %d ^ %#x: error = %v, want ErrDecrypt", i, mask, err)
			}
		}
	}
	for n := range len(sealed) {
		if _, err := k.Open(ctx, "r1", sealed[:n]); !errors.Is(err, ErrDecrypt) {
			t.Errorf("Open of the first %d bytes: error = %v, want ErrDecrypt", n, err)
		}
	}
	if _, err := k.Open(ctx, "r1", append(bytes.Clone(sealed), 0)); !errors.Is(err, ErrDecrypt) {
		t.Errorf("Open with a trailing byte: error = %v, want ErrDecrypt", err)
	}
}

func TestUnknownKey(t *testing.T) {
	ctx := context.Background()
	sealed, err := NewKeyring(mustKeys(t, "old", "old")).Seal(ctx, "r", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewKeyring(mustKeys(t, "new", "new")).Open(ctx, "r", sealed)
	if !errors.Is(err, ErrDecrypt) || !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Open under a provider without the key: error = %v, want ErrDecrypt and ErrUnknownKey", err)
	}
	// Same id, different key material.
	other, err := NewStaticKeys("old", map[string][]byte{"old": testKey(9)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewKeyring(other).Open(ctx, "r", sealed); !errors.Is(err, ErrDecrypt) {
		t.Errorf("Open with the wrong key under the same id: error = %v, want ErrDecrypt", err)
	}
}

func TestRotation(t *testing.T) {
	ctx := context.Background()
	plain := []byte("task content")
	sealed, err := NewKeyring(mustKeys(t, "k1", "k1")).Seal(ctx, "r", plain)
	if err != nil {
		t.Fatal(err)
	}
	both := NewKeyring(mustKeys(t, "k2", "k1", "k2"))
	rewrapped, err := both.Rewrap(ctx, "r", sealed)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := parse(sealed)
	after, err := parse(rewrapped)
	if err != nil {
		t.Fatal(err)
	}
	if after.keyID != "k2" {
		t.Errorf("rewrapped key id = %q, want k2", after.keyID)
	}
	if !bytes.Equal(before.body, after.body) {
		t.Error("Rewrap changed the nonce or ciphertext; it must only re-wrap the data key")
	}
	// The old KEK can be dropped once everything is rewrapped: k2 alone opens
	// it, with k2 holding the key material "both" gave it.
	onlyK2, err := NewStaticKeys("k2", map[string][]byte{"k2": testKey(2)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := NewKeyring(onlyK2).Open(ctx, "r", rewrapped)
	if err != nil || !bytes.Equal(got, plain) {
		t.Errorf("Open after rotation = %q, %v; want %q", got, err, plain)
	}
	again, err := both.Rewrap(ctx, "r", rewrapped)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, rewrapped) {
		t.Error("Rewrap of bytes already under the current key changed them")
	}
	again[0] ^= 1
	if rewrapped[0] == again[0] {
		t.Error("Rewrap returned its input slice, not a copy")
	}
}

func TestNoPlaintextInOutput(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	plain := []byte("Find the password in /etc/shadow and print it")
	sealed, err := k.Seal(context.Background(), "r", plain)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range strings.Fields(string(plain)) {
		if len(w) >= 4 && bytes.Contains(sealed, []byte(w)) {
			t.Errorf("sealed output contains plaintext word %q", w)
		}
	}
	if bytes.Contains(sealed, testKey(1)[:8]) {
		t.Error("sealed output contains KEK bytes")
	}
}

func TestRefusals(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := context.Background()
	sealed, err := k.Seal(ctx, "r", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Seal(cancelled, "r", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Seal with cancelled ctx: %v, want context.Canceled", err)
	}
	if _, err := k.Open(cancelled, "r", sealed); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with cancelled ctx: %v, want context.Canceled", err)
	}
	if _, err := k.Rewrap(cancelled, "r", sealed); !errors.Is(err, context.Canceled) {
		t.Errorf("Rewrap with cancelled ctx: %v, want context.Canceled", err)
	}
	if _, err := k.Seal(ctx, "", []byte("x")); err == nil {
		t.Error("Seal with an empty record id succeeded")
	}
	if _, err := k.Open(ctx, "", sealed); err == nil {
		t.Error("Open with an empty record id succeeded")
	}
}

type failingProvider struct{ KeyProvider }

func (failingProvider) Wrap(context.Context, string, []byte) ([]byte, error) {
	return nil, errors.New("kms unavailable")
}

func TestProviderErrorsSurface(t *testing.T) {
	_, err := NewKeyring(failingProvider{mustKeys(t, "k1", "k1")}).Seal(context.Background(), "r", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "kms unavailable") {
		t.Errorf("Seal with a failing provider: %v, want its error", err)
	}
}

func TestNewStaticKeys(t *testing.T) {
	for _, c := range []struct {
		name    string
		current string
		keys    map[string][]byte
	}{
		{"no keys", "k1", nil},
		{"short key", "k1", map[string][]byte{"k1": make([]byte, 16)}},
		{"current missing", "k2", map[string][]byte{"k1": testKey(1)}},
		{"empty id", "", map[string][]byte{"": testKey(1)}},
		{"long id", strings.Repeat("k", 256), map[string][]byte{strings.Repeat("k", 256): testKey(1)}},
	} {
		if _, err := NewStaticKeys(c.current, c.keys); err == nil {
			t.Errorf("%s: NewStaticKeys succeeded", c.name)
		}
	}
	// The provider copies its keys.
	key := testKey(1)
	p, err := NewStaticKeys("k1", map[string][]byte{"k1": key})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := NewKeyring(p).Seal(context.Background(), "r", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	clear(key)
	if _, err := NewKeyring(p).Open(context.Background(), "r", sealed); err != nil {
		t.Errorf("Open after the caller cleared its key slice: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	k := NewKeyring(mustKeys(t, "k1", "k1"))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			id := fmt.Sprint("r", i)
			sealed, err := k.Seal(context.Background(), id, []byte(id))
			if err == nil {
				var got []byte
				got, err = k.Open(context.Background(), id, sealed)
				if err == nil && string(got) != id {
					err = fmt.Errorf("record %s opened to %q", id, got)
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("generated key file mode = %#o, want 0600", fi.Mode().Perm())
	}
	if err := GenerateKeyFile(path); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKeyFile over an existing file: %v, want os.ErrExist", err)
	}
	p, err := LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeyring(p)
	sealed, err := k.Seal(context.Background(), "r", []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Open(context.Background(), "r", sealed); err != nil || string(got) != "content" {
		t.Errorf("Open with a loaded key file = %q, %v", got, err)
	}
	other := filepath.Join(dir, "other.json")
	if err := GenerateKeyFile(other); err != nil {
		t.Fatal(err)
	}
	p2, err := LoadKeyFile(other)
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := p.CurrentKeyID(context.Background())
	id2, _ := p2.CurrentKeyID(context.Background())
	if id1 == id2 {
		t.Errorf("two generated key files share key id %q", id1)
	}
}

func TestLoadKeyFileRefuses(t *testing.T) {
	dir := t.TempDir()
	good := `{"current":"k1","keys":{"k1":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}}`
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // WriteFile's mode passes through umask
			t.Fatal(err)
		}
		return p
	}
	if _, err := LoadKeyFile(write("good.json", good, 0o600)); err != nil {
		t.Fatalf("LoadKeyFile of a good file: %v", err)
	}
	for _, c := range []struct {
		name, body string
		mode       os.FileMode
		want       string
	}{
		{"group-readable", good, 0o640, "chmod 600"},
		{"other-readable", good, 0o604, "chmod 600"},
		{"group-writable", good, 0o620, "chmod 600"},
		{"not json", "k1=AAAA", 0o600, "not {"},
		{"unknown field", `{"current":"k1","keys":{},"extra":1}`, 0o600, "unknown field"},
		{"bad base64", `{"current":"k1","keys":{"k1":"***"}}`, 0o600, "base64"},
		{"short key", `{"current":"k1","keys":{"k1":"AQID"}}`, 0o600, "AES-256"},
		{"current missing", `{"current":"k9","keys":{"k1":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}}`, 0o600, "k9"},
		{"too large", strings.Repeat(" ", MaxKeyFileBytes+1), 0o600, "exceeds"},
	} {
		_, err := LoadKeyFile(write(c.name, c.body, c.mode))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: LoadKeyFile error = %v, want one mentioning %q", c.name, err, c.want)
		}
	}
	if _, err := LoadKeyFile(dir); err == nil {
		t.Error("LoadKeyFile of a directory succeeded")
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadKeyFile of a missing file: %v, want os.ErrNotExist", err)
	}
}

func TestFormatHeader(t *testing.T) {
	sealed, err := NewKeyring(mustKeys(t, "key-7", "key-7")).Seal(context.Background(), "r", []byte("abc"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := parse(sealed)
	if err != nil {
		t.Fatal(err)
	}
	want := struct {
		Prefix        string
		KeyID         string
		Wrapped, Body int
	}{"CTE\x01\x05key-7", "key-7", nonceSize + KeySize + tagSize, nonceSize + 3 + tagSize}
	if diff := cmp.Diff(want, struct {
		Prefix        string
		KeyID         string
		Wrapped, Body int
	}{string(sealed[:10]), got.keyID, len(got.wrapped), len(got.body)}); diff != "" {
		t.Errorf("sealed layout (-want +got):\n%s", diff)
	}
}

func BenchmarkSeal(b *testing.B) {
	k := NewKeyring(mustKeys(b, "k1", "k1"))
	plain := make([]byte, 64<<10)
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		if _, err := k.Seal(context.Background(), "r", plain); err != nil {
			b.Fatal(err)
		}
	}
}
