package scantest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// recorder is a testing.TB that keeps failures instead of failing.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestScanDirFinds(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte(`{"run_id":"run-1","log":"the goal is here"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		secret, mustFind string
		fails            int
	}{
		{"the goal", "run-1", 1},
		{"not stored", "run-1", 0},
		{"not stored", "run-2", 1},
	} {
		r := &recorder{TB: t}
		ScanDir(r, dir, [][]byte{[]byte(c.secret)}, c.mustFind)
		if len(r.errs) != c.fails {
			t.Errorf("ScanDir for secret %q, must find %q: failures %q, want %d", c.secret, c.mustFind, r.errs, c.fails)
		}
	}
}
