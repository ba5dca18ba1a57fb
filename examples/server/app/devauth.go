package app

import (
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
)

// DevKeyFile is the name, in the data directory, of the devauth signing key.
const DevKeyFile = "devauth.key"

// DevAuthority returns the devauth authority of the data directory: tokens
// it issues are those the server (with Config.Auth = AuthDev) accepts. Its
// Ed25519 key is kept in dataDir/devauth.key (mode 0600), created on first
// use; a key file that group or others may read is refused. staffClaim is
// Config.StaffClaim ("" for the default).
func DevAuthority(dataDir, staffClaim string) (*devauth.Authority, error) {
	if staffClaim == "" {
		staffClaim = "compatool_staff"
	}
	key, err := loadDevKey(filepath.Join(dataDir, DevKeyFile))
	if err != nil {
		return nil, err
	}
	return devauth.New(key, &devauth.Options{StaffClaim: staffClaim})
}

func loadDevKey(path string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		seed := make([]byte, ed25519.SeedSize)
		rand.Read(seed)
		_, werr := f.WriteString(base64.StdEncoding.EncodeToString(seed) + "\n")
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			os.Remove(path)
			return nil, fmt.Errorf("app: write %s: %w", path, err)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	}
	if !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("app: create %s: %w", path, err)
	}
	f, err = os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("app: %s must be a regular file that only its owner may read (mode %s); run chmod 600 %s", path, fi.Mode(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("app: %s does not hold a base64 Ed25519 seed; delete it to make a new key (tokens signed with the old one stop working)", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// TokenRequest describes a local token to mint.
type TokenRequest struct {
	// Subject is the user id; default "user_local".
	Subject string
	// Org is the organisation the token acts for.
	Org auth.OrgID
	// Role defaults to "org:admin".
	Role string
	// Staff marks the holder as platform staff.
	Staff bool
	// Lifetime defaults to devauth.DefaultMaxLifetime, the most the server
	// accepts.
	Lifetime time.Duration
}

// MintToken issues a token of the data directory's devauth authority.
func MintToken(dataDir, staffClaim string, req TokenRequest) (string, error) {
	a, err := DevAuthority(dataDir, staffClaim)
	if err != nil {
		return "", err
	}
	c := devauth.Claims{Subject: cmp.Or(req.Subject, "user_local"), Org: req.Org, Staff: req.Staff, Lifetime: req.Lifetime}
	if c.Lifetime == 0 {
		c.Lifetime = devauth.DefaultMaxLifetime
	}
	if req.Org != "" {
		c.Role = cmp.Or(req.Role, "org:admin")
	}
	return a.Issue(c)
}
