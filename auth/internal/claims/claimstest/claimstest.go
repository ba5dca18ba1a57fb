// Package claimstest holds the helpers that the tests of claims, devauth and
// clerkauth share: editing a claims map and benchmarking an authenticator.
// Only tests import it.
package claimstest

import (
	"context"
	"maps"
	"testing"

	"github.com/compatool/compatool/auth"
)

// With returns a copy of claims with changes applied; a nil value deletes
// the claim.
func With(claims, changes map[string]any) map[string]any {
	out := maps.Clone(claims)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range changes {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// Benchmark measures a.Authenticate of token, which a must accept, from
// parallel goroutines, and reports verifications per second.
func Benchmark(b *testing.B, a auth.Authenticator, token string) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Authenticate(ctx, token); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}
