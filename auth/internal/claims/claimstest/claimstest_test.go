package claimstest_test

import (
	"testing"

	"github.com/compatool/compatool/auth/internal/claims/claimstest"
	"github.com/google/go-cmp/cmp"
)

func TestWith(t *testing.T) {
	base := map[string]any{"sub": "u", "org_id": "org_a", "exp": 60}
	for _, c := range []struct {
		name    string
		claims  map[string]any
		changes map[string]any
		want    map[string]any
	}{
		{"set and delete", base, map[string]any{"sub": "v", "org_id": nil, "v": 2}, map[string]any{"sub": "v", "exp": 60, "v": 2}},
		{"no changes", base, nil, base},
		{"delete absent", base, map[string]any{"o": nil}, base},
		{"nil claims", nil, map[string]any{"sub": "u"}, map[string]any{"sub": "u"}},
	} {
		got := claimstest.With(c.claims, c.changes)
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("%s: With (-want +got):\n%s", c.name, diff)
		}
	}
	if diff := cmp.Diff(map[string]any{"sub": "u", "org_id": "org_a", "exp": 60}, base); diff != "" {
		t.Errorf("With changed its input (-want +got):\n%s", diff)
	}
}
