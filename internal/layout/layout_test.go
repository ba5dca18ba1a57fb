package layout

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/compatool/compatool"

// floors maps a package tree to its floor. A package belongs to the longest
// tree that prefixes it.
var floors = map[string]float64{
	"internal/redacted": 0,
	"auth":              1,
	"sandbox":           1,
	"billing":           1,
	"storage":           2,
	"redact":            3,
	"retention":         3,
	"internal/gateway":  3,
	"internal/d1emu":    2, // test support for d1store: a D1 REST emulator on SQLite
	"compatool":         4,
	"examples":          5,
	"internal/layout":   5,
}

// suites are the conformance suites: test support that may use anything
// below the harness to build fixtures (storagetest makes transcripts with
// package redact), so they sit between floors 3 and 4.
var suites = []string{"auth/authtest", "sandbox/sandboxtest", "storage/storagetest", "billing/billingtest"}

// testSupportFloor is the floor of test and benchmark support (packages
// named *test, test*, *bench or bench*, such as internal/scantest) and of the
// benchmark programs under a cmd/ directory: above everything, and imported
// by tests, benchmarks and each other only.
const testSupportFloor = 6

func isTestSupport(rel string) bool {
	if strings.Contains("/"+rel, "/cmd/") {
		return true
	}
	name := rel[strings.LastIndex(rel, "/")+1:]
	for _, w := range []string{"test", "bench"} {
		if strings.HasSuffix(name, w) || strings.HasPrefix(name, w) {
			return true
		}
	}
	return false
}

func floorOf(t *testing.T, pkg string) (tree string, floor float64) {
	rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	for _, s := range suites {
		if rel == s || strings.HasPrefix(rel, s+"/") {
			return s, 3.5
		}
	}
	if isTestSupport(rel) {
		return rel, testSupportFloor
	}
	best := ""
	for tr := range floors {
		if (rel == tr || strings.HasPrefix(rel, tr+"/")) && len(tr) > len(best) {
			best = tr
		}
	}
	if best == "" {
		t.Fatalf("package %s has no floor; add its tree to floors in %s", pkg, "internal/layout")
	}
	return best, floors[best]
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

func TestImportsPointDownward(t *testing.T) {
	for _, line := range goList(t, "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...") {
		fields := strings.Fields(line)
		pkg := fields[0]
		tree, floor := floorOf(t, pkg)
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			itree, ifloor := floorOf(t, imp)
			if itree == tree {
				continue
			}
			if ifloor == testSupportFloor && floor != testSupportFloor {
				t.Errorf("%s imports test-support package %s; only tests may", pkg, imp)
			}
			if ifloor >= floor && floor != testSupportFloor {
				t.Errorf("%s (floor %g) imports %s (floor %g): imports must point to a lower floor", pkg, floor, imp, ifloor)
			}
		}
	}
}

// forbidden are the modules and driver packages only examples (and tests)
// may depend on.
var forbidden = []string{
	"github.com/cloudflare/", "github.com/stripe/", "github.com/clerk/", "github.com/aws/",
	module + "/sandbox/cfsandbox", module + "/storage/d1store", module + "/storage/r2store",
	module + "/auth/clerkauth", module + "/billing/stripebilling",
}

func TestCoreHasNoCloudDependency(t *testing.T) {
	core := []string{"compatool", "sandbox", "storage", "auth", "redact", "retention", "billing"}
	for _, c := range core {
		for _, dep := range goList(t, "-deps", "./"+c) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("core package %s depends on %s; only examples may", c, dep)
				}
			}
		}
	}
}

func TestFloorOf(t *testing.T) {
	for pkg, want := range map[string]float64{
		module + "/storage/memstore":                      2,
		module + "/storage/storagetest":                   3.5,
		module + "/compatool":                             4,
		module + "/internal/redacted":                     0,
		module + "/examples/tasks/notes":                  5,
		module + "/internal/scantest":                     6,
		module + "/sandbox/ocisandbox/internal/testimage": 6,
		module + "/sandbox/ocisandbox/cmd/ocibench":       6,
		module + "/sandbox/ocisandbox":                    1,
	} {
		if _, got := floorOf(t, pkg); got != want {
			t.Errorf("floorOf(%s) = %g, want %g", pkg, got, want)
		}
	}
}

// TestNoUnconfiguredNetwork keeps P14 and P15 checkable by construction: no
// package of the module can push or pull an image over the network (the
// registry client is not linked at all), none links a telemetry or
// analytics client, and none outside examples and tests reaches for Go's
// default HTTP client, whose use would be a network call the host did not
// configure.
func TestNoUnconfiguredNetwork(t *testing.T) {
	banned := []string{
		"github.com/google/go-containerregistry/pkg/v1/remote",
		"go.opentelemetry.io/otel/exporters", "github.com/getsentry/", "github.com/segmentio/analytics-go",
		"gopkg.in/segmentio/analytics-go", "github.com/DataDog/", "github.com/posthog/", "github.com/mixpanel/",
	}
	for _, dep := range goList(t, "-deps", "./...") {
		for _, b := range banned {
			if strings.HasPrefix(dep, b) {
				t.Errorf("the module links %s", dep)
			}
		}
	}
	out, err := exec.Command("git", "-C", "../..", "grep", "-n", "-E", `http\.(DefaultClient|Get\(|Post\(|Head\(|PostForm\()`, "--", "*.go", ":!*_test.go", ":!examples/", ":!*/cmd/*").Output()
	if err != nil && len(out) > 0 {
		t.Fatalf("git grep: %v", err)
	}
	if len(out) > 0 {
		t.Errorf("code outside examples uses Go's default HTTP client; take an *http.Client from the host instead:\n%s", out)
	}
}
