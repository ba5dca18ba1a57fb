package scantest

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestScanDirReadsXattrs(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "object")
	if err := os.WriteFile(f, []byte("run-1"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setxattr(f, "user.x-amz-meta-note", []byte("the goal"), 0); err != nil {
		t.Fatalf("this test needs a filesystem with user extended attributes: %v", err)
	}
	r := &recorder{TB: t}
	ScanDir(r, dir, [][]byte{[]byte("the goal")}, "run-1")
	if len(r.errs) != 1 {
		t.Errorf("ScanDir of a secret in an extended attribute: failures %q, want 1", r.errs)
	}
}
