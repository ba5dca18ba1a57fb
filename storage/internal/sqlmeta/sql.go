package sqlmeta

// Every statement the drivers run. Parameters are all text, as D1's REST API
// takes them: integers are CAST, and the empty string stands for NULL
// (NULLIF) where a column is nullable. Every tenant statement names the org.

const runColumns = `id, submission, org, task, state, created_at, started_at, finished_at, result`

const (
	sqlPutTask = `INSERT INTO tasks (id, environment, month, private, sealed, published, retired_at, created_at)
VALUES (?, ?, ?, CAST(? AS INTEGER), NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''))
ON CONFLICT (id) DO UPDATE SET
  environment = excluded.environment, month = excluded.month, private = excluded.private,
  sealed = excluded.sealed, published = excluded.published,
  retired_at = excluded.retired_at, created_at = excluded.created_at`
	taskColumns = `id, environment, month, private, sealed, published, retired_at, created_at`
	sqlGetTask  = `SELECT ` + taskColumns + ` FROM tasks WHERE id = ?`
	sqlListTask = `SELECT ` + taskColumns + ` FROM tasks ORDER BY id`

	// SQLInsertSubmission takes id, org, meta, meta_sealed and write_id.
	SQLInsertSubmission = `INSERT INTO submissions (id, org, public, meta, meta_sealed, write_id)
VALUES (?, ?, 0, ?, CAST(? AS INTEGER), ?)`
	// SQLInsertRun takes the arguments [RunArgs] makes.
	SQLInsertRun = `INSERT INTO runs (` + runColumns + `) VALUES ` + runValues
	runValues    = `(?, ?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''))`
	// runsPerInsert keeps a multi-row insert of runs within D1's 100
	// parameters per statement.
	runsPerInsert      = 100 / 9
	sqlWriteID         = `SELECT write_id FROM submissions WHERE id = ?`
	submissionColumns  = `id, org, public, meta, meta_sealed`
	sqlGetSubmission   = `SELECT ` + submissionColumns + ` FROM submissions WHERE id = ? AND org = ?`
	sqlListSubmissions = `SELECT ` + submissionColumns + ` FROM submissions
WHERE org = ? AND id > ? ORDER BY id LIMIT CAST(? AS INTEGER)`
	sqlSetPublic = `UPDATE submissions SET public = CAST(? AS INTEGER) WHERE id = ? AND org = ? RETURNING id`
	// The runs go explicitly as well as by the foreign key's cascade, so that
	// erasure does not depend on a connection's foreign_keys setting.
	sqlDeleteRuns       = `DELETE FROM runs WHERE submission = ? AND org = ?`
	sqlDeleteSubmission = `DELETE FROM submissions WHERE id = ? AND org = ? RETURNING id`

	sqlGetRun = `SELECT ` + runColumns + ` FROM runs WHERE id = ? AND org = ?`
	// sqlListRuns yields the page of runs, then one row of NULLs if the
	// submission is the org's: existence and the page in one statement,
	// each part on its index. It takes the submission id, the org, After,
	// the limit, the submission id and the org.
	sqlListRuns = `SELECT * FROM (SELECT ` + runColumns + ` FROM runs
  WHERE submission = ? AND org = ? AND id > ? ORDER BY id LIMIT CAST(? AS INTEGER))
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM submissions WHERE id = ? AND org = ?`
	sqlRunKeys   = `SELECT submission, task FROM runs WHERE id = ? AND org = ?`
	sqlUpdateRun = `UPDATE runs SET state = ?, created_at = NULLIF(?, ''), started_at = NULLIF(?, ''),
  finished_at = NULLIF(?, ''), result = NULLIF(?, '')
WHERE id = ? AND org = ? AND submission = ? AND task = ?`
	sqlRunsInState = `SELECT ` + runColumns + ` FROM runs
WHERE state = ? AND id > ? ORDER BY id LIMIT CAST(? AS INTEGER)`
	sqlPublicRun = `SELECT r.id, r.submission, r.org, r.task, r.state, r.created_at, r.started_at, r.finished_at, r.result
FROM runs r JOIN submissions s ON s.id = r.submission AND s.org = r.org
WHERE r.id = ? AND s.public = 1`

	sqlAppendAudit = `INSERT INTO audit (id, org, at, staff, operation, reason, action, target, write_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqlAuditWriteID = `SELECT write_id FROM audit WHERE id = ?`
	// Audit pages by record id in (at, id) order. The first page starts at
	// the org's oldest record; a later one after the record After names,
	// which must be the org's, else the comparison with no row is NULL
	// and the page is empty. The "at >=" lets the index skip the records
	// before After.
	auditColumns      = `id, org, at, staff, operation, reason, action, target`
	sqlListAuditFirst = `SELECT ` + auditColumns + ` FROM audit WHERE org = ?
ORDER BY at, id LIMIT CAST(? AS INTEGER)`
	sqlListAuditAfter = `SELECT ` + auditColumns + ` FROM audit
WHERE org = ? AND at >= (SELECT a.at FROM audit a WHERE a.id = ? AND a.org = ?)
  AND (at, id) > (SELECT a.at, a.id FROM audit a WHERE a.id = ? AND a.org = ?)
ORDER BY at, id LIMIT CAST(? AS INTEGER)`
)
