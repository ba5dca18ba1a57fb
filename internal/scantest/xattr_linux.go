package scantest

import (
	"bytes"
	"errors"
	"syscall"
)

// xattrs returns the names and values of path's extended attributes, where
// S3 servers such as versitygw keep object metadata.
func xattrs(path string) ([]byte, error) {
	names, err := getx(func(b []byte) (int, error) { return syscall.Listxattr(path, b) })
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(names)
	for name := range bytes.SplitSeq(names, []byte{0}) {
		if len(name) == 0 {
			continue
		}
		v, err := getx(func(b []byte) (int, error) { return syscall.Getxattr(path, string(name), b) })
		if errors.Is(err, syscall.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
	}
	return out, nil
}

// getx calls f with a buffer large enough for its answer.
func getx(f func([]byte) (int, error)) ([]byte, error) {
	for {
		n, err := f(nil)
		if errors.Is(err, syscall.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		b := make([]byte, n)
		m, err := f(b)
		if errors.Is(err, syscall.ERANGE) {
			continue // grew meanwhile
		}
		if err != nil {
			return nil, err
		}
		return b[:m], nil
	}
}
