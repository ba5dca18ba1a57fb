package ocisandbox_test

import (
	"testing"

	"github.com/compatool/compatool/sandbox/sandboxtest"
)

func TestConformance(t *testing.T) {
	sandboxtest.RunConformanceTests(t, runtimeHarness("runc"))
}
