package sqlitestore

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/compatool/compatool/auth"
	"github.com/compatool/compatool/storage"
	"github.com/compatool/compatool/storage/internal/sqlmeta"
)

// The listing benchmark's data: 1,000,000 runs across 100 orgs, as 100
// submissions of 100 runs per org.
const (
	benchOrgs        = 100
	benchSubsPerOrg  = 100
	benchRunsPerSub  = 100
	benchTotalRuns   = benchOrgs * benchSubsPerOrg * benchRunsPerSub
	benchRowsPerTx   = 50_000
	benchSubsPerTx   = benchRowsPerTx / benchRunsPerSub
	benchTotalSubs   = benchOrgs * benchSubsPerOrg
	benchMillisStart = 1767225600000 // 2026-01-01
)

func benchOrg(i int) auth.OrgID { return auth.OrgID(fmt.Sprintf("org_%03d", i)) }

// benchSubmissionID names submission i (in creation order) the way the
// harness does: a millisecond clock, then random bytes.
func benchSubmissionID(rng *rand.Rand, i int) storage.SubmissionID {
	return storage.SubmissionID(fmt.Sprintf("sub_%013x%016x", benchMillisStart+i*60_000, rng.Uint64()))
}

// benchDB returns the path of a database holding the benchmark's data,
// building it once per schema under os.TempDir, and the ids of each org's
// submissions.
func benchDB(b *testing.B) (string, [][]storage.SubmissionID) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("compatool-sqlitestore-bench-%s-%d.db", sqlmeta.SchemaID(), benchTotalRuns))
	rng := rand.New(rand.NewPCG(1, 2))
	subs := make([][]storage.SubmissionID, benchOrgs)
	ids := make([]storage.SubmissionID, benchTotalSubs)
	for i := range ids {
		ids[i] = benchSubmissionID(rng, i)
		subs[i%benchOrgs] = append(subs[i%benchOrgs], ids[i])
	}
	if _, err := os.Stat(path); err == nil {
		return path, subs
	}
	b.Logf("building %s (once per schema)", path)
	start := time.Now()
	tmp := fmt.Sprintf("%s.tmp-%d", path, os.Getpid())
	if err := buildBenchDB(tmp, ids, rng); err != nil {
		os.Remove(tmp)
		b.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	b.Logf("built in %v", time.Since(start).Round(time.Millisecond))
	return path, subs
}

func buildBenchDB(path string, ids []storage.SubmissionID, rng *rand.Rand) error {
	ctx := context.Background()
	s, err := Open(ctx, path, nil) // the schema, by the store's own migrations
	if err != nil {
		return err
	}
	defer s.Close()
	// The bulk load uses the store's writer, with the statements and
	// argument encoding the store itself uses, in big transactions.
	db := s.writer
	at := time.UnixMilli(benchMillisStart).UTC()
	for first := 0; first < len(ids); first += benchSubsPerTx {
		err := func() error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			insSub, err := tx.PrepareContext(ctx, sqlmeta.SQLInsertSubmission)
			if err != nil {
				return err
			}
			insRun, err := tx.PrepareContext(ctx, sqlmeta.SQLInsertRun)
			if err != nil {
				return err
			}
			for i := first; i < min(first+benchSubsPerTx, len(ids)); i++ {
				org := benchOrg(i % benchOrgs)
				created := at.Add(time.Duration(i) * time.Minute)
				sub := storage.Submission{ID: ids[i], Org: org, Owner: "user_" + string(org), AgentName: "agent", Image: "registry.example/agent@sha256:00", CreatedAt: created}
				var runs []storage.Run
				for k := range benchRunsPerSub {
					task := storage.TaskID(fmt.Sprintf("task-%03d", k))
					sub.Tasks = append(sub.Tasks, task)
					r := storage.Run{ID: storage.RunID(fmt.Sprintf("run_%013x%016x", created.UnixMilli(), rng.Uint64())),
						Submission: sub.ID, Org: org, Task: task, State: storage.RunFinished, CreatedAt: created,
						StartedAt: created.Add(time.Second), FinishedAt: created.Add(time.Minute),
						Result: &storage.Result{Passed: k%3 != 0, Score: float64(k%4) / 4, Detail: "3 of 4 checks",
							Exit: storage.Exit{Reason: "exited"}, ToolCalls: k % 17, AgentTime: 59 * time.Second}}
					runs = append(runs, r)
				}
				args, err := s.meta.SubmissionArgs(ctx, sub, fmt.Sprint(i))
				if err != nil {
					return err
				}
				if _, err := insSub.ExecContext(ctx, anys(args)...); err != nil {
					return err
				}
				for _, r := range runs {
					args, err := sqlmeta.RunArgs(r)
					if err != nil {
						return err
					}
					if _, err := insRun.ExecContext(ctx, anys(args)...); err != nil {
						return err
					}
				}
			}
			return tx.Commit()
		}()
		if err != nil {
			return err
		}
	}
	_, err = db.ExecContext(ctx, "ANALYZE")
	return err
}

func anys(args []string) []any {
	out := make([]any, len(args))
	for i, a := range args {
		out[i] = a
	}
	return out
}

// BenchmarkListRuns lists all runs (one default page) of one submission of
// one org, with 1,000,000 runs stored across 100 orgs. It reports the p50
// and p99 latency of one ListRuns call.
func BenchmarkListRuns(b *testing.B) {
	path, subs := benchDB(b)
	ctx := context.Background()
	s, err := Open(ctx, path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		org := rng.IntN(benchOrgs)
		sub := subs[org][rng.IntN(len(subs[org]))]
		start := time.Now()
		runs, err := s.ListRuns(ctx, auth.InternalScope(benchOrg(org)), sub, storage.Page{})
		lat = append(lat, time.Since(start))
		if err != nil || len(runs) != benchRunsPerSub {
			b.Fatalf("ListRuns(%s, %s) = %d runs, %v; want %d", benchOrg(org), sub, len(runs), err, benchRunsPerSub)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(benchTotalRuns, "runs-stored")
}

// BenchmarkDeleteSubmission erases one submission of 100 runs, scrub
// included, from a copy of the database of 1,000,000 runs: the cost of
// erasure at that size.
func BenchmarkDeleteSubmission(b *testing.B) {
	src, subs := benchDB(b)
	path := filepath.Join(b.TempDir(), "copy.db")
	if err := copyFile(path, src); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	s, err := Open(ctx, path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	i := 0
	for b.Loop() {
		org := i % benchOrgs
		if err := s.DeleteSubmission(ctx, auth.InternalScope(benchOrg(org)), subs[org][i/benchOrgs]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
