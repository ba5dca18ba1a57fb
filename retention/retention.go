// Package retention makes the data-handling table of the security page
// executable: [Table] lists every data category with its store, retention
// and the action that enforces it, and a [Sweeper] carries out the timed
// actions (promises P5 and P6 of DESIGN.md): transcripts older than 12
// months are archived, and private tasks whose active month has ended are
// retired with their plaintext published.
//
// A sweep is idempotent (a second sweep at the same time does nothing) and
// safe to re-run after a crash: each step is one store write.
package retention

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/envelope"
)

// Category is one row of the security page's data-handling table.
type Category struct {
	Data      string
	Store     string
	Retention string
	// Enforced says what in this module keeps the retention.
	Enforced string
}

// Table is the security page's data-handling table as code.
var Table = []Category{
	{"Submission metadata (agent name, owner ID, timestamps)", "storage.MetadataStore (D1, encrypted at rest)", "Indefinite, deletable on request", "kept until compatool.Harness.Erase, which cascades to runs, results and transcripts"},
	{"Run transcripts", "storage.TranscriptStore (R2)", "12 months, then archived", "Sweeper archives transcripts stored more than TranscriptRetention ago"},
	{"Task content (private set)", "storage.MetadataStore, sealed by storage/envelope", "Active month only; plaintext published on retirement", "the harness serves a private task only in its month; Sweeper retires it after and publishes the plaintext"},
	{"Authentication tokens", "Clerk (not stored by Compatool)", "Per Clerk policy", "auth verifies tokens in memory and never stores them"},
	{"Billing data", "Order form / Stripe", "Per Stripe policy", "billing.Meter sends usage counts only"},
}

// TranscriptRetention is how long a transcript stays live before it is
// archived.
const TranscriptRetention = "12 months"

// ArchiveCutoff returns the time before which transcripts are archived.
func ArchiveCutoff(now time.Time) time.Time { return now.UTC().AddDate(0, -12, 0) }

// Sweeper carries out the timed retention actions.
type Sweeper struct {
	Metadata    storage.MetadataStore
	Transcripts storage.TranscriptStore
	// Keys opens sealed task content for publication.
	Keys *envelope.Keyring
	// Logger receives a line per action; nil discards.
	Logger *slog.Logger
}

// Report says what a sweep did.
type Report struct {
	Archived []storage.RunID
	Retired  []storage.TaskID
}

// Sweep archives transcripts stored before ArchiveCutoff(now) and retires
// private tasks whose month ended before now's month. It stops at the first
// error; what it did before stays done and a later sweep finishes the rest.
func (s *Sweeper) Sweep(ctx context.Context, now time.Time) (Report, error) {
	var r Report
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cutoff := ArchiveCutoff(now)
	p := storage.Page{Limit: storage.MaxPageLimit}
	for {
		infos, err := s.Transcripts.StoredBefore(ctx, cutoff, p)
		if err != nil {
			return r, fmt.Errorf("retention: list transcripts: %w", err)
		}
		for _, in := range infos {
			if err := s.Transcripts.Archive(ctx, auth.InternalScope(in.Org), in.Run); err != nil {
				return r, fmt.Errorf("retention: archive transcript %s: %w", in.Run, err)
			}
			r.Archived = append(r.Archived, in.Run)
			log.Info("transcript archived", "run", in.Run, "org", in.Org, "stored_at", in.StoredAt)
		}
		if len(infos) < p.N() {
			break
		}
		p.After = string(infos[len(infos)-1].Run)
	}

	month := now.UTC().Format("2006-01")
	tasks, err := s.Metadata.ListTasks(ctx)
	if err != nil {
		return r, fmt.Errorf("retention: list tasks: %w", err)
	}
	for _, t := range tasks {
		if !t.Private || !t.RetiredAt.IsZero() || t.Month >= month {
			continue
		}
		plain, err := s.Keys.Open(ctx, string(t.ID), t.Sealed)
		if err != nil {
			return r, fmt.Errorf("retention: open task %s for publication: %w", t.ID, err)
		}
		t.Published, t.Sealed, t.RetiredAt = plain, nil, now.UTC()
		if err := s.Metadata.PutTask(ctx, t); err != nil {
			return r, fmt.Errorf("retention: retire task %s: %w", t.ID, err)
		}
		r.Retired = append(r.Retired, t.ID)
		log.Info("task retired and published", "task", t.ID, "month", t.Month)
	}
	return r, nil
}
