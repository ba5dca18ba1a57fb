package storage_test

import (
	"errors"
	"fmt"

	"github.com/compatool/compatool/storage"
)

// Ids are checked before any driver sees them, and listings are paged.
func Example() {
	fmt.Println(storage.ValidID("run_01HZX"))
	fmt.Println(errors.Is(storage.ValidID("../etc"), storage.ErrInvalid))
	fmt.Println(storage.Page{}.N(), storage.Page{Limit: 5000}.N())
	fmt.Println(storage.RunQueued.Terminal(), storage.RunCancelled.Terminal())
	// Output:
	// <nil>
	// true
	// 100 1000
	// false true
}
