package envelope

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
)

// ErrUnknownKey reports a key id the provider does not hold.
var ErrUnknownKey = errors.New("envelope: unknown key id")

// MaxKeyFileBytes bounds the size of a key file.
const MaxKeyFileBytes = 1 << 20

// wrapAADPrefix binds a wrapped data key to the id of the KEK that wrapped it.
const wrapAADPrefix = "compatool.envelope.kek/v1\x00"

// staticKeys is a KeyProvider over AES-256 KEKs held in memory. Its maps are
// never written after construction, so it needs no lock.
type staticKeys struct {
	current string
	keys    map[string][]byte
}

var _ KeyProvider = (*staticKeys)(nil)

// NewStaticKeys returns a [KeyProvider] over 32-byte AES-256 KEKs held in
// memory; current names the one new data keys are wrapped with. Data keys are
// wrapped with AES-256-GCM, the key id bound as additional data. The keys are
// copied.
func NewStaticKeys(current string, keys map[string][]byte) (KeyProvider, error) {
	if len(keys) == 0 {
		return nil, errors.New("envelope: no keys given; generate one with GenerateKeyFile or 32 bytes from crypto/rand")
	}
	p := &staticKeys{current: current, keys: make(map[string][]byte, len(keys))}
	for id, k := range keys {
		if err := checkKeyID(id); err != nil {
			return nil, fmt.Errorf("envelope: %w", err)
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("envelope: key %q is %d bytes; AES-256 needs %d", id, len(k), KeySize)
		}
		p.keys[id] = bytes.Clone(k)
	}
	if _, ok := p.keys[current]; !ok {
		return nil, fmt.Errorf("envelope: current key %q is not among the keys %q; name one of them", current, keyIDs(keys))
	}
	return p, nil
}

func keyIDs(keys map[string][]byte) []string { return slices.Sorted(maps.Keys(keys)) }

func (p *staticKeys) CurrentKeyID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return p.current, nil
}

func (p *staticKeys) Wrap(ctx context.Context, keyID string, dataKey []byte) ([]byte, error) {
	aead, err := p.aead(ctx, keyID)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(dataKey)+tagSize)
	rand.Read(out)
	return aead.Seal(out, out, dataKey, []byte(wrapAADPrefix+keyID)), nil
}

func (p *staticKeys) Unwrap(ctx context.Context, keyID string, wrapped []byte) ([]byte, error) {
	aead, err := p.aead(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < nonceSize+tagSize {
		return nil, fmt.Errorf("wrapped key is %d bytes, too short", len(wrapped))
	}
	dek, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], []byte(wrapAADPrefix+keyID))
	if err != nil {
		return nil, fmt.Errorf("wrapped key does not authenticate under key %q", keyID)
	}
	return dek, nil
}

func (p *staticKeys) aead(ctx context.Context, keyID string) (cipher.AEAD, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, ok := p.keys[keyID]
	if !ok {
		return nil, fmt.Errorf("%w %q; add the key that sealed this record to the provider", ErrUnknownKey, keyID)
	}
	return newGCM(k)
}

// keyFile is the JSON form of a key file.
type keyFile struct {
	Current string            `json:"current"`
	Keys    map[string]string `json:"keys"` // id → standard base64 of 32 bytes
}

// LoadKeyFile reads a local key file and returns a [KeyProvider] over its
// keys. The file is JSON:
//
//	{"current": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "…"}}
//
// To rotate, add a key and point "current" at it; keep the old keys until
// every record is rewrapped ([Keyring.Rewrap]). LoadKeyFile refuses a file
// that is not a regular file, that group or others may read or write (Unix
// mode & 077 != 0), or that exceeds [MaxKeyFileBytes].
func LoadKeyFile(path string) (KeyProvider, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("envelope: opening key file: %w", err)
	}
	defer f.Close()
	// Stat the open file, not the path, so the checked file is the read one.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("envelope: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("envelope: key file %s is not a regular file (mode %s)", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("envelope: key file %s has mode %#o and is open to group or others; run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("envelope: reading key file: %w", err)
	}
	if len(data) > MaxKeyFileBytes {
		return nil, fmt.Errorf("envelope: key file %s exceeds %d bytes", path, MaxKeyFileBytes)
	}
	var kf keyFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf(`envelope: key file %s is not {"current": ..., "keys": {...}}: %w`, path, err)
	}
	keys := make(map[string][]byte, len(kf.Keys))
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	for id, b64 := range kf.Keys {
		k, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("envelope: key file %s: key %q is not standard base64", path, id)
		}
		keys[id] = k
	}
	p, err := NewStaticKeys(kf.Current, keys)
	if err != nil {
		return nil, fmt.Errorf("%w (in key file %s)", err, path)
	}
	return p, nil
}

// GenerateKeyFile creates a key file at path holding one new random key,
// which is current. The file is created with mode 0600 and never
// overwritten: GenerateKeyFile fails if path exists.
func GenerateKeyFile(path string) (err error) {
	key := make([]byte, KeySize)
	defer clear(key)
	rand.Read(key)
	var idBytes [4]byte
	rand.Read(idBytes[:])
	id := "k-" + hex.EncodeToString(idBytes[:])
	data, err := json.MarshalIndent(keyFile{Current: id, Keys: map[string]string{id: base64.StdEncoding.EncodeToString(key)}}, "", "  ")
	if err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	data = append(data, '\n')
	defer clear(data)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("envelope: creating key file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("envelope: writing key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("envelope: writing key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("envelope: writing key file: %w", err)
	}
	return nil
}
