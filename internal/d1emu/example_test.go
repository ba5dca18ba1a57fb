package d1emu_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/compatool/compatool/internal/d1emu"
)

func Example() {
	dir, _ := os.MkdirTemp("", "d1emu")
	defer os.RemoveAll(dir)
	emu, err := d1emu.New(filepath.Join(dir, "d1.db"), d1emu.Options{AccountID: "acct", DatabaseID: "db", Token: "token"})
	if err != nil {
		log.Fatal(err)
	}
	defer emu.Close()
	srv := httptest.NewServer(emu)
	defer srv.Close()

	query := func(body string) {
		req, _ := http.NewRequest("POST", srv.URL+"/client/v4/accounts/acct/d1/database/db/raw", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer token")
		resp, err := srv.Client().Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, strings.Contains(string(b), `"success":true`))
	}
	query(`{"sql": "CREATE TABLE notes (id TEXT PRIMARY KEY)"}`)
	emu.Inject(d1emu.ApplyThenFail)
	query(`{"batch": [{"sql": "INSERT INTO notes VALUES (?)", "params": ["a"]}]}`) // applied, but answered 500
	query(`{"sql": "INSERT INTO notes VALUES (?)", "params": ["a"]}`)              // so a retry meets the first write
	fmt.Println(emu.Requests(), "requests")
	// Output:
	// 200 true
	// 500 false
	// 400 false
	// 3 requests
}
