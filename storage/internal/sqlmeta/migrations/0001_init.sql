-- The metadata schema, version 1.
--
-- These files run unchanged on SQLite (sqlitestore) and on Cloudflare D1
-- (d1store), so they hold no PRAGMA and no BEGIN/COMMIT: the migrator applies
-- each file together with its row in schema_migrations as one transaction.
--
-- Encodings, chosen so that D1's JSON transport keeps every value exact:
--   times     fixed-width UTC text "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ", so text
--             order is time order; NULL for the zero time
--   booleans  INTEGER 0 or 1
--   bytes     standard base64 TEXT (D1's REST API has no blob parameters)
--   records   JSON TEXT where no query looks inside (run results, submission
--             metadata)

CREATE TABLE tasks (
  id          TEXT PRIMARY KEY,
  environment TEXT NOT NULL,
  month       TEXT NOT NULL,
  private     INTEGER NOT NULL CHECK (private IN (0, 1)),
  sealed      TEXT,
  published   TEXT,
  retired_at  TEXT,
  created_at  TEXT
);

-- A submission's owner, agent name, image, tasks and creation time are kept
-- in meta: JSON, or with meta_sealed = 1 the base64 of that JSON sealed by
-- package envelope. write_id is a random id of the call that created the row,
-- so that a retried create can recognise its own earlier write.
CREATE TABLE submissions (
  id          TEXT PRIMARY KEY,
  org         TEXT NOT NULL,
  public      INTEGER NOT NULL DEFAULT 0 CHECK (public IN (0, 1)),
  meta        TEXT NOT NULL,
  meta_sealed INTEGER NOT NULL CHECK (meta_sealed IN (0, 1)),
  write_id    TEXT NOT NULL
);
CREATE INDEX submissions_by_org ON submissions (org, id);

CREATE TABLE runs (
  id          TEXT PRIMARY KEY,
  submission  TEXT NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
  org         TEXT NOT NULL,
  task        TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished', 'failed', 'cancelled')),
  created_at  TEXT,
  started_at  TEXT,
  finished_at TEXT,
  result      TEXT
);
CREATE INDEX runs_by_submission ON runs (submission, id);
CREATE INDEX runs_by_state ON runs (state, id);

-- The audit log is append-only (P12): the triggers refuse every UPDATE and
-- DELETE, whoever issues it.
CREATE TABLE audit (
  id        TEXT PRIMARY KEY,
  org       TEXT NOT NULL,
  at        TEXT NOT NULL,
  staff     TEXT NOT NULL,
  operation TEXT NOT NULL,
  reason    TEXT NOT NULL,
  action    TEXT NOT NULL,
  target    TEXT NOT NULL,
  write_id  TEXT NOT NULL
);
CREATE INDEX audit_by_org ON audit (org, at, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
  SELECT RAISE(ABORT, 'audit records are append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
  SELECT RAISE(ABORT, 'audit records are append-only');
END;
