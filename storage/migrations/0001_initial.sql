-- The first schema: members, a credit ledger, and jobs.
-- Balances are maintained by a trigger from ledger entries, and a CHECK keeps them from going negative,
-- so a debit is one INSERT that either lands whole or not at all, however many run at once.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,            -- "<platform>:<id>", e.g. "discord:1234", "shell:local"
    balance     INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  REAL NOT NULL
);

CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL,
    amount      INTEGER NOT NULL,            -- signed change to the spendable balance
    idem_key    TEXT NOT NULL UNIQUE,
    job_id      TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id, id);

CREATE TRIGGER ledger_applies AFTER INSERT ON ledger
BEGIN
    UPDATE users SET balance = balance + NEW.amount WHERE id = NEW.user_id;
END;

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    options     TEXT NOT NULL,               -- JSON
    cost        INTEGER NOT NULL,
    provider    TEXT,
    handle      TEXT,                        -- JSON of providers.base.JobHandle
    reply       TEXT NOT NULL,               -- JSON of the reply target
    error       TEXT,
    video_path  TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX jobs_user ON jobs(user_id, created_at);
