// Package layout holds the test that keeps the module's floors (DESIGN.md):
// imports point downward only, and the core packages never depend on a
// Cloudflare, Stripe, Clerk or AWS module or on a driver for one. It has no
// code of its own.
package layout
