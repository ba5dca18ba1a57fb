package clerkauth

import (
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clerk/clerk-sdk-go/v2"
	"github.com/compatool/compatool/auth/internal/claims"
)

// RSA keys outside these bounds are skipped: smaller ones are forgeable,
// larger ones make every verification slow (a cheap denial of service).
const minRSABits, maxRSABits = 2048, 8192

// keySet is one fetched JWKS, immutable once stored.
type keySet struct {
	keys    map[string]*clerk.JSONWebKey // by kid; Algorithm is RS256 or EdDSA
	fetched time.Time
}

// fetch is one JWKS request; err is set before done is closed.
type fetch struct {
	done chan struct{}
	err  error
}

// keyCache holds the key set and schedules its fetches: at most one runs at
// a time, and apart from Refresh a new one starts only when the last began
// at least interval ago.
type keyCache struct {
	url, secret string
	client      *http.Client
	interval    time.Duration
	maxAge      time.Duration
	timeout     time.Duration
	now         func() time.Time
	log         *slog.Logger

	set atomic.Pointer[keySet] // nil until the first successful fetch

	mu      sync.Mutex
	last    time.Time // start of the last fetch
	lastErr error     // outcome of the last finished fetch
	running *fetch
}

// lookup returns the key named kid. A kid missing from the cached set
// triggers a fetch when the schedule allows one, and waits for it.
func (c *keyCache) lookup(ctx context.Context, kid string) (*clerk.JSONWebKey, error) {
	if s := c.set.Load(); s != nil {
		if k := s.keys[kid]; k != nil {
			if c.now().Sub(s.fetched) >= c.maxAge {
				c.start(false) // revalidate in the background; k stays good meanwhile
			}
			return k, nil
		}
	}
	f, ok := c.start(false)
	if !ok {
		if k := c.find(kid); k != nil { // a fetch ended since the first look
			return k, nil
		}
		c.mu.Lock()
		err := c.lastErr
		c.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("key id %q cannot be checked: the last JWKS fetch failed (%v); the next is allowed %v after it", kid, err, c.interval)
		}
		return nil, fmt.Errorf("unknown key id %q (the key set was fetched less than %v ago)", kid, c.interval)
	}
	if err := c.wait(ctx, f); err != nil {
		return nil, fmt.Errorf("key id %q cannot be checked: %w", kid, err)
	}
	if k := c.find(kid); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("unknown key id %q: not in the JWKS at %s", kid, c.url)
}

func (c *keyCache) find(kid string) *clerk.JSONWebKey {
	if s := c.set.Load(); s != nil {
		return s.keys[kid]
	}
	return nil
}

// start returns the running fetch, or starts one if force is set or the
// schedule allows; ok is false when neither.
func (c *keyCache) start(force bool) (f *fetch, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running != nil {
		return c.running, true
	}
	now := c.now()
	// A clock that went backwards (elapsed < 0) must not block fetches
	// until it catches up.
	if elapsed := now.Sub(c.last); !force && !c.last.IsZero() && elapsed >= 0 && elapsed < c.interval {
		return nil, false
	}
	c.last = now
	f = &fetch{done: make(chan struct{})}
	c.running = f
	// The fetch is detached from the caller's ctx: others may be waiting on
	// it, and one caller giving up must not fail them. FetchTimeout bounds it.
	go func() {
		f.err = c.fetch()
		if f.err != nil {
			c.log.Warn("clerkauth: JWKS fetch failed", "url", c.url, "err", f.err)
		}
		c.mu.Lock()
		c.running, c.lastErr = nil, f.err
		c.mu.Unlock()
		close(f.done)
	}()
	return f, true
}

func (c *keyCache) wait(ctx context.Context, f *fetch) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetch GETs the key set and stores it. A failed fetch keeps the previous
// set: keys disappear only when a successful fetch no longer lists them.
func (c *keyCache) fetch() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if c.secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.secret)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s; check Options.JWKSURL and Options.SecretKey", c.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	if len(body) > MaxJWKSBytes {
		return fmt.Errorf("GET %s: response exceeds %d bytes", c.url, MaxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	c.set.Store(&keySet{keys: keys, fetched: c.now()})
	return nil
}

// parseJWKS returns the usable keys of a JWKS by kid. Keys this package
// cannot use are skipped, as RFC 7517 §5 asks; a kid listed twice is
// dropped, since the token could not say which of the two it means.
func parseJWKS(body []byte) (map[string]*clerk.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("not a JWKS: %v", err)
	}
	keys := make(map[string]*clerk.JSONWebKey, len(doc.Keys))
	var dup []string
	for _, raw := range doc.Keys {
		k := new(clerk.JSONWebKey)
		if json.Unmarshal(raw, k) != nil || k.KeyID == "" || len(k.KeyID) > claims.MaxTextBytes || k.Use != "" && k.Use != "sig" {
			continue
		}
		switch pub := k.Key.(type) {
		case *rsa.PublicKey:
			if n := pub.N.BitLen(); n < minRSABits || n > maxRSABits || k.Algorithm != "" && k.Algorithm != "RS256" {
				continue
			}
			k.Algorithm = "RS256"
		case ed25519.PublicKey:
			if len(pub) != ed25519.PublicKeySize || k.Algorithm != "" && k.Algorithm != "EdDSA" {
				continue
			}
			k.Algorithm = "EdDSA"
		default: // private keys, EC, symmetric: never a session-token key here
			continue
		}
		if keys[k.KeyID] != nil {
			dup = append(dup, k.KeyID)
		}
		keys[k.KeyID] = k
	}
	for _, kid := range dup {
		delete(keys, kid)
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable key: want RSA (2048 to 8192 bits, RS256) or Ed25519 (EdDSA) signing keys with a kid")
	}
	return keys, nil
}
