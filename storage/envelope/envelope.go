// Package envelope encrypts private task content at rest (P6 of DESIGN.md)
// with envelope encryption, independently of the store that keeps the bytes.
//
// Every record gets a fresh AES-256-GCM data key from crypto/rand. The data
// key is wrapped by a key-encryption key (KEK) that a [KeyProvider] holds, and
// the record's id is bound to the ciphertext as additional data, so sealed
// bytes copied onto another record do not open. Rotating the KEK needs only
// [Keyring.Rewrap], which re-wraps the data key and leaves the content's
// ciphertext as it is.
//
// Sealed bytes are self-describing (format version 1, all integers
// big-endian):
//
//	"CTE" 0x01                 magic and version
//	len(keyID) uint8, keyID    the KEK the data key is wrapped with
//	len(wrapped) uint16, wrapped
//	nonce [12]byte
//	ciphertext || GCM tag
//
// Providers: [NewStaticKeys] holds KEKs in memory; [LoadKeyFile] reads them
// from a local key file that [GenerateKeyFile] creates. A KMS-backed provider
// implements [KeyProvider] in a few lines.
//
// # Errors
//
// [Keyring.Open] and [Keyring.Rewrap] report bytes that do not open — a wrong
// record id, a changed byte, an unknown or wrong key — with an error wrapping
// [ErrDecrypt]. No error text contains plaintext or key material.
package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrDecrypt reports sealed bytes that cannot be opened with the given record
// id and the provider's keys.
var ErrDecrypt = errors.New("envelope: cannot decrypt")

// KeySize is the size of every key: AES-256.
const KeySize = 32

// MaxKeyIDBytes bounds a key id; the sealed format stores its length in a byte.
const MaxKeyIDBytes = 255

const (
	magic     = "CTE"
	version   = 1
	nonceSize = 12
	tagSize   = 16
	// aadPrefix separates the record-id binding of this format from any
	// other use of the same data key.
	aadPrefix = "compatool.envelope/v1\x00"
)

// KeyProvider holds key-encryption keys. Implementations must be safe for
// concurrent use and honour ctx when they do I/O.
type KeyProvider interface {
	// CurrentKeyID names the KEK new data keys are wrapped with.
	CurrentKeyID(ctx context.Context) (string, error)
	// Wrap encrypts dataKey under the KEK keyID. The result must be
	// authenticated: Unwrap of altered bytes fails.
	Wrap(ctx context.Context, keyID string, dataKey []byte) ([]byte, error)
	// Unwrap reverses Wrap. It fails for an unknown keyID or bytes that
	// Wrap did not produce under keyID.
	Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error)
}

// Keyring seals and opens records with data keys wrapped by a
// [KeyProvider]. It is safe for concurrent use.
type Keyring struct {
	p KeyProvider
}

// NewKeyring returns a Keyring that wraps data keys with p.
func NewKeyring(p KeyProvider) *Keyring { return &Keyring{p: p} }

// Seal encrypts plaintext for the record recordID under a fresh data key
// wrapped with the provider's current KEK.
func (k *Keyring) Seal(ctx context.Context, recordID string, plaintext []byte) ([]byte, error) {
	if err := checkRecord(ctx, recordID); err != nil {
		return nil, err
	}
	dek := make([]byte, KeySize)
	defer clear(dek)
	rand.Read(dek) // never returns an error; it crashes the program instead
	keyID, wrapped, err := k.wrap(ctx, dek)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	h := header(keyID, wrapped)
	nonce := make([]byte, nonceSize)
	rand.Read(nonce)
	out := make([]byte, 0, len(h)+nonceSize+len(plaintext)+tagSize)
	out = append(append(out, h...), nonce...)
	return aead.Seal(out, nonce, plaintext, aad(recordID)), nil
}

// Open decrypts bytes that Seal made for recordID.
func (k *Keyring) Open(ctx context.Context, recordID string, sealed []byte) ([]byte, error) {
	if err := checkRecord(ctx, recordID); err != nil {
		return nil, err
	}
	e, err := parse(sealed)
	if err != nil {
		return nil, err
	}
	dek, err := k.unwrap(ctx, e)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	return openContent(dek, recordID, e)
}

// Rewrap re-wraps the data key of sealed under the provider's current KEK,
// for key rotation. The nonce and ciphertext are kept byte for byte; only the
// key id and wrapped key change. The content is authenticated first, so
// Rewrap fails with [ErrDecrypt] where Open would. Bytes already under the
// current KEK are returned as an unchanged copy.
func (k *Keyring) Rewrap(ctx context.Context, recordID string, sealed []byte) ([]byte, error) {
	if err := checkRecord(ctx, recordID); err != nil {
		return nil, err
	}
	e, err := parse(sealed)
	if err != nil {
		return nil, err
	}
	dek, err := k.unwrap(ctx, e)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	plain, err := openContent(dek, recordID, e)
	clear(plain)
	if err != nil {
		return nil, err
	}
	current, err := k.p.CurrentKeyID(ctx)
	if err != nil {
		return nil, fmt.Errorf("envelope: current key id: %w", err)
	}
	if current == e.keyID {
		return append([]byte(nil), sealed...), nil
	}
	keyID, wrapped, err := k.wrap(ctx, dek)
	if err != nil {
		return nil, err
	}
	h := header(keyID, wrapped)
	out := make([]byte, 0, len(h)+len(e.body))
	return append(append(out, h...), e.body...), nil
}

func (k *Keyring) wrap(ctx context.Context, dek []byte) (keyID string, wrapped []byte, err error) {
	keyID, err = k.p.CurrentKeyID(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("envelope: current key id: %w", err)
	}
	if err := checkKeyID(keyID); err != nil {
		return "", nil, fmt.Errorf("envelope: provider's current key: %w", err)
	}
	wrapped, err = k.p.Wrap(ctx, keyID, dek)
	if err != nil {
		return "", nil, fmt.Errorf("envelope: wrapping data key with key %q: %w", keyID, err)
	}
	if len(wrapped) == 0 || len(wrapped) > 0xFFFF {
		return "", nil, fmt.Errorf("envelope: provider wrapped a data key into %d bytes; want 1 to 65535", len(wrapped))
	}
	return keyID, wrapped, nil
}

func (k *Keyring) unwrap(ctx context.Context, e sealedParts) ([]byte, error) {
	dek, err := k.p.Unwrap(ctx, e.keyID, e.wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: unwrapping data key with key %q: %w", ErrDecrypt, e.keyID, err)
	}
	if len(dek) != KeySize {
		clear(dek)
		return nil, fmt.Errorf("%w: key %q unwrapped a %d-byte data key", ErrDecrypt, e.keyID, len(dek))
	}
	return dek, nil
}

func openContent(dek []byte, recordID string, e sealedParts) ([]byte, error) {
	aead, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, e.body[:nonceSize], e.body[nonceSize:], aad(recordID))
	if err != nil {
		// The GCM error says nothing useful; never echo the input.
		return nil, fmt.Errorf("%w: content does not authenticate for record %q (wrong record or altered bytes)", ErrDecrypt, recordID)
	}
	return plain, nil
}

// sealedParts are views into sealed bytes.
type sealedParts struct {
	keyID   string
	wrapped []byte
	body    []byte // nonce || ciphertext || tag
}

func parse(b []byte) (sealedParts, error) {
	bad := func(what string) (sealedParts, error) {
		return sealedParts{}, fmt.Errorf("%w: malformed sealed bytes: %s", ErrDecrypt, what)
	}
	if len(b) < len(magic)+1 || string(b[:len(magic)]) != magic {
		return bad("no envelope header")
	}
	if b[len(magic)] != version {
		return bad(fmt.Sprintf("format version %d; this package reads version %d", b[len(magic)], version))
	}
	b = b[len(magic)+1:]
	if len(b) < 1 || b[0] == 0 || len(b) < 1+int(b[0]) {
		return bad("key id")
	}
	keyID := string(b[1 : 1+b[0]])
	b = b[1+b[0]:]
	if len(b) < 2 {
		return bad("wrapped key length")
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || len(b) < 2+n {
		return bad("wrapped key")
	}
	wrapped := b[2 : 2+n]
	b = b[2+n:]
	if len(b) < nonceSize+tagSize {
		return bad("ciphertext too short")
	}
	return sealedParts{keyID: keyID, wrapped: wrapped, body: b}, nil
}

func header(keyID string, wrapped []byte) []byte {
	h := make([]byte, 0, len(magic)+1+1+len(keyID)+2+len(wrapped))
	h = append(h, magic...)
	h = append(h, version, byte(len(keyID)))
	h = append(h, keyID...)
	h = binary.BigEndian.AppendUint16(h, uint16(len(wrapped)))
	return append(h, wrapped...)
}

func aad(recordID string) []byte { return append([]byte(aadPrefix), recordID...) }

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return cipher.NewGCM(block)
}

func checkRecord(ctx context.Context, recordID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	if recordID == "" {
		return errors.New("envelope: record id is empty; pass the id of the record the content belongs to")
	}
	return nil
}

func checkKeyID(id string) error {
	if id == "" || len(id) > MaxKeyIDBytes {
		return fmt.Errorf("key id must be 1 to %d bytes, got %d", MaxKeyIDBytes, len(id))
	}
	return nil
}
