package memstore

import (
	"bytes"
	"fmt"
	"iter"
	"slices"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
)

// pageIDs returns the ids after p.After in byte order, at most p.N() of them.
func pageIDs[K ~string](ids iter.Seq[K], p storage.Page) []K {
	var out []K
	for id := range ids {
		if string(id) > p.After {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out[:min(len(out), p.N())]
}

// validSubmission applies the shared rules of package storage plus the
// scope's: a submission is created only in the scope's organisation.
func validSubmission(sc auth.Scope, sub storage.Submission, runs []storage.Run) error {
	if err := sub.Validate(); err != nil {
		return fmt.Errorf("memstore: %w", err)
	}
	if sub.Org != sc.Org() {
		return fmt.Errorf("memstore: submission %q has Org %q but the scope is of org %q: %w", sub.ID, sub.Org, sc.Org(), storage.ErrInvalid)
	}
	if err := sub.ValidateRuns(runs); err != nil {
		return fmt.Errorf("memstore: %w", err)
	}
	return nil
}

func cloneTask(t storage.Task) storage.Task {
	t.Sealed = bytes.Clone(t.Sealed)
	t.Published = bytes.Clone(t.Published)
	return t
}

func cloneSubmission(s storage.Submission) storage.Submission {
	s.Tasks = slices.Clone(s.Tasks)
	return s
}

func cloneRun(r storage.Run) storage.Run {
	if r.Result != nil {
		res := *r.Result
		r.Result = &res
	}
	return r
}
