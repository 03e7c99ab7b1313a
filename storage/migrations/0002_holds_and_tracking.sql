-- Holds with a life of their own, durable tracking of jobs in flight, budgets and learned run times.

ALTER TABLE ledger ADD COLUMN ref TEXT;      -- free-form external reference (payment id, ...)

CREATE TABLE holds (
    job_id      TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    state       TEXT NOT NULL CHECK (state IN ('held', 'captured', 'released')),
    created_at  REAL NOT NULL,
    settled_at  REAL
);
CREATE INDEX holds_open ON holds(state) WHERE state = 'held';

-- Holds written by the first schema live on as rows here, settled or not.
INSERT INTO holds (job_id, user_id, amount, state, created_at, settled_at)
SELECT h.job_id, h.user_id, -h.amount,
       COALESCE((SELECT CASE s.kind WHEN 'capture' THEN 'captured' ELSE 'released' END
                 FROM ledger s WHERE s.job_id = h.job_id AND s.kind IN ('capture', 'release')), 'held'),
       h.created_at,
       (SELECT s.created_at FROM ledger s WHERE s.job_id = h.job_id AND s.kind IN ('capture', 'release'))
FROM ledger h WHERE h.kind = 'hold';

-- A hold entry opens a hold; capture and release close an open one, and only an open one.
CREATE TRIGGER ledger_settle_guard BEFORE INSERT ON ledger
WHEN NEW.kind IN ('capture', 'release')
BEGIN
    SELECT RAISE(ABORT, 'no open hold for this job')
    WHERE NOT EXISTS (SELECT 1 FROM holds WHERE job_id = NEW.job_id AND state = 'held');
END;

CREATE TRIGGER ledger_opens_hold AFTER INSERT ON ledger
WHEN NEW.kind = 'hold'
BEGIN
    INSERT INTO holds (job_id, user_id, amount, state, created_at)
    VALUES (NEW.job_id, NEW.user_id, -NEW.amount, 'held', NEW.created_at);
END;

CREATE TRIGGER ledger_closes_hold AFTER INSERT ON ledger
WHEN NEW.kind IN ('capture', 'release')
BEGIN
    UPDATE holds SET state = CASE NEW.kind WHEN 'capture' THEN 'captured' ELSE 'released' END,
                     settled_at = NEW.created_at
    WHERE job_id = NEW.job_id;
END;

ALTER TABLE jobs ADD COLUMN community_id TEXT;
ALTER TABLE jobs ADD COLUMN dedupe_key TEXT;
ALTER TABLE jobs ADD COLUMN image_path TEXT;
ALTER TABLE jobs ADD COLUMN image_mime TEXT;
ALTER TABLE jobs ADD COLUMN image_url TEXT;
ALTER TABLE jobs ADD COLUMN usd_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN provider_charged INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN webhook_token TEXT;
ALTER TABLE jobs ADD COLUMN queue_position INTEGER;
ALTER TABLE jobs ADD COLUMN result_url TEXT;
ALTER TABLE jobs ADD COLUMN deadline_at REAL;
ALTER TABLE jobs ADD COLUMN submitted_at REAL;
ALTER TABLE jobs ADD COLUMN started_at REAL;
ALTER TABLE jobs ADD COLUMN finished_at REAL;
ALTER TABLE jobs ADD COLUMN notified_at REAL;

CREATE INDEX jobs_open ON jobs(state)
    WHERE state NOT IN ('delivered', 'failed', 'cancelled', 'expired');
-- A double click is not two clips: one open job per member and identical request.
CREATE UNIQUE INDEX jobs_dedupe ON jobs(user_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND state NOT IN ('delivered', 'failed', 'cancelled', 'expired');
CREATE UNIQUE INDEX jobs_webhook_token ON jobs(webhook_token) WHERE webhook_token IS NOT NULL;
CREATE INDEX jobs_submitted ON jobs(submitted_at);

CREATE TABLE job_events (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL,
    state       TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    at          REAL NOT NULL
);
CREATE INDEX job_events_job ON job_events(job_id, id);

-- Observed run times, so polling can be sparse early and dense near the expected finish.
CREATE TABLE run_samples (
    id            INTEGER PRIMARY KEY,
    provider      TEXT NOT NULL,
    variant       TEXT NOT NULL,             -- e.g. "image-to-video/512P/5"
    queue_seconds REAL,
    run_seconds   REAL NOT NULL,
    recorded_at   REAL NOT NULL
);
CREATE INDEX run_samples_key ON run_samples(provider, variant, id);
