package httpauth_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/auth/devauth"
	"github.com/compatool/compatool/auth/httpauth"
)

func Example() {
	authority, err := devauth.Generate(nil)
	if err != nil {
		panic(err)
	}
	m, err := httpauth.New(authority, &httpauth.Options{Realm: "compatool"})
	if err != nil {
		panic(err)
	}
	errNotFound := errors.New("not found") // storage.ErrNotFound in a host
	api := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scope, err := auth.ScopeFor(httpauth.Principal(r.Context()))
		if err != nil {
			m.Error(w, r, err, errNotFound)
			return
		}
		if r.URL.Path != "/results/"+string(scope.Org()) {
			m.Error(w, r, errNotFound, errNotFound) // another org's data: as if absent
			return
		}
		fmt.Fprintln(w, "results of", scope.Org())
	}))
	srv := httptest.NewServer(api)
	defer srv.Close()

	token, err := authority.Issue(devauth.Claims{Subject: "user_1", Org: "org_acme"})
	if err != nil {
		panic(err)
	}
	get := func(path, authorization string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
		fmt.Println(strings.TrimSpace(fmt.Sprint(path, " ", resp.StatusCode, " ", resp.Header.Get("WWW-Authenticate"))))
	}
	get("/results/org_acme", "Bearer "+token)
	get("/results/org_other", "Bearer "+token)
	get("/results/org_acme", "")
	get("/results/org_acme", "Bearer "+token[:len(token)-2])
	// Output:
	// /results/org_acme 200
	// /results/org_other 404
	// /results/org_acme 401 Bearer realm="compatool"
	// /results/org_acme 401 Bearer realm="compatool", error="invalid_token"
}

// A host that answers errors in JSON renders refusals itself; the
// middleware still picks the status and sets the challenge.
func ExampleOptions_onError() {
	authority, err := devauth.Generate(nil)
	if err != nil {
		panic(err)
	}
	m, err := httpauth.New(authority, &httpauth.Options{
		Realm: "compatool",
		OnError: func(w http.ResponseWriter, r *http.Request, status int, err error) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			code := "error"
			if errors.Is(err, auth.ErrUnauthenticated) {
				code = "unauthenticated"
			}
			fmt.Fprintf(w, `{"error": {"code": %q}}`+"\n", code)
		},
	})
	if err != nil {
		panic(err)
	}
	h := m.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") }))

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	fmt.Print(rec.Code, " ", rec.Header().Get("WWW-Authenticate"), " ", rec.Body)
	// Output:
	// 401 Bearer realm="compatool" {"error": {"code": "unauthenticated"}}
}
